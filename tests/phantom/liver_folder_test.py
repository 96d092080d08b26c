"""phantom.liver_folder: byte-deterministic files, and the anatomy its docstring promises.

References: the written files read back by nibabel (an independent reader of the
layout) and the phantom's own truth arrays, checked against hand-stated anatomy: the
liver on the patient's right, the lesion inside the liver, the HU of each tissue.
"""

import nibabel as nib
import numpy as np

from dinolg_jax.phantom import liver_folder


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    liver_folder.write_nifti_folder(tmp_path / "a", n_cases=2, seed=4, size=24, n_slices=6)
    liver_folder.write_nifti_folder(tmp_path / "b", n_cases=2, seed=4, size=24, n_slices=6)
    liver_folder.write_nifti_folder(tmp_path / "c", n_cases=2, seed=5, size=24, n_slices=6)
    for sub in ("images/case-00.nii.gz", "masks/case-01.nii.gz"):
        a = (tmp_path / "a" / sub).read_bytes()
        assert a == (tmp_path / "b" / sub).read_bytes()
        assert a != (tmp_path / "c" / sub).read_bytes()


def test_anatomy_and_stored_layouts(tmp_path):
    cases = liver_folder.write_nifti_folder(tmp_path, n_cases=4, seed=0, size=48, n_slices=12)
    for n, case in enumerate(cases):
        liver = case.labels > 0
        _, _, cols = np.nonzero(liver)
        assert cols.mean() < 24  # patient's right: low columns in the canonical layout
        assert not liver[0].any() and not liver[-1].any() and liver[6].any()
        assert abs(np.median(case.hu[case.labels == 1]) - 60) <= 3
        assert (case.labels == 2).any() == (n % 2 == 1)
        img = nib.load(str(tmp_path / "images" / case.image))
        axcodes = nib.aff2axcodes(img.affine)
        assert (
            axcodes
            == [
                ("L", "P", "S"),
                ("R", "A", "S"),
                ("L", "P", "I"),
                ("P", "R", "S"),
            ][n]
        )
        # The file's voxel holding canonical voxel (k, r, c) is where the affine puts it.
        data = np.asanyarray(img.dataobj)
        k, r, c = 5, 20, 11
        lps = case.affine_lps @ np.array([c, r, k, 1.0])
        ijk = np.linalg.solve(img.affine, np.array([-lps[0], -lps[1], lps[2], 1.0]))
        i, j, kk = np.rint(ijk[:3]).astype(int)
        assert np.allclose(ijk[:3], (i, j, kk), atol=1e-4)
        assert data[i, j, kk] == case.hu[k, r, c]
