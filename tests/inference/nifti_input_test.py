"""inference.nifti_input against SimpleITK (ITK's own NIfTI reader, LPS world coordinates).

NIfTI files of known content are written with nibabel in several voxel orders (RAS,
LPS, LAS with swapped in-plane axes, slices descending) and unequal spacings; our reader
must place every voxel at the world point ITK places it (0.01 mm), give the same HU
there, and produce the canonical layout (column -> patient left, row -> posterior, z
ascending). Outputs of a NIfTI study go back on the input's own grid.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dinolg_jax.inference import nifti, nifti_input

TOL_MM = 0.01
# voxel axes (i, j, k) as RAS direction vectors, and spacings (mm) per voxel axis.
LAYOUTS = {
    "ras": (np.eye(3), (0.7, 0.5, 3.0)),
    "lps": (np.diag([-1.0, -1.0, 1.0]), (0.5, 0.8, 2.5)),
    "swapped_desc": (np.array([[0, 1, 0], [-1, 0, 0], [0, 0, -1]], float).T, (0.6, 0.45, 3.0)),
}


def _write(path: Path, axes: np.ndarray, spacing, shape=(12, 9, 5), origin=(31.5, -20.0, -40.0)):
    rng = np.random.default_rng(3)
    data = rng.integers(-1024, 1500, shape).astype(np.int16)
    affine = np.eye(4)
    affine[:3, :3] = axes * np.asarray(spacing)[None, :]
    affine[:3, 3] = origin
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code="scanner")
    img.set_qform(affine, code="scanner")
    nib.save(img, str(path))
    return data, affine


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_world_positions_and_hu_agree_with_simpleitk(tmp_path: Path, name: str) -> None:
    axes, spacing = LAYOUTS[name]
    path = tmp_path / f"{name}.nii.gz"
    _write(path, axes, spacing)
    vol = nifti_input.read_nifti_ct(path)
    ref = sitk.ReadImage(str(path))
    assert vol.study_id == name and vol.kind == "nifti"
    z, h, w = vol.hu.shape
    # canonical layout: a column step +x (left), a row step +y (posterior), z ascending
    np.testing.assert_allclose(vol.geometry.col_dir, (1, 0, 0), atol=1e-12)
    np.testing.assert_allclose(vol.geometry.row_dir, (0, 1, 0), atol=1e-12)
    assert np.all(np.diff(vol.z_mm) > 0)
    for k in range(z):
        for r in (0, h - 1):
            for c in (0, w - 1):
                ours = vol.geometry.world_mm(k, r, c)
                idx = ref.TransformPhysicalPointToIndex(tuple(float(v) for v in ours))
                np.testing.assert_allclose(
                    ref.TransformIndexToPhysicalPoint(idx), ours, atol=TOL_MM
                )
                assert ref[idx] == vol.hu[k, r, c]
    # every voxel: ITK's image resampled (nearest) onto our canonical grid is our volume
    grid = sitk.Image(w, h, z, sitk.sitkInt16)
    grid.SetSpacing((vol.pixel_mm[1], vol.pixel_mm[0], vol.slice_thickness_mm))
    grid.SetOrigin(tuple(vol.geometry.origin_mm))
    resampled = sitk.Resample(ref, grid, sitk.Transform(), sitk.sitkNearestNeighbor, -5000)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), vol.hu)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_outputs_go_back_on_the_input_grid(tmp_path: Path, name: str) -> None:
    axes, spacing = LAYOUTS[name]
    data, affine = _write(tmp_path / "in.nii", axes, spacing)
    vol = nifti_input.read_nifti_ct(tmp_path / "in.nii")
    labels = (vol.hu > 1000).astype(np.uint8) * 2
    ct_path, lab_path = nifti.write_study(
        tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz", vol, labels
    )
    ct, lab = nib.load(ct_path), nib.load(lab_path)
    for img in (ct, lab):
        assert img.shape == data.shape
        np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ct.dataobj), data)
    np.testing.assert_array_equal(np.asarray(lab.dataobj), (data > 1000) * 2)


def test_scaled_values_are_hu_after_slope_and_intercept(tmp_path: Path) -> None:
    raw = np.full((4, 4, 2), 1024, np.uint16)
    raw[0, 0, 0] = 0
    raw[1, 2, 1] = 1524
    img = nib.Nifti1Image(raw, np.diag([0.5, 0.5, 3.0, 1.0]))
    img.header.set_slope_inter(1.0, -1024.0)
    img.set_sform(np.diag([0.5, 0.5, 3.0, 1.0]), code="scanner")
    nib.save(img, str(tmp_path / "s.nii"))
    vol = nifti_input.read_nifti_ct(tmp_path / "s.nii")
    # RAS voxel axes: i runs right and j anterior, so the canonical columns (to the left)
    # and rows (posterior) are reversed: (i, j, k) -> (k, 3 - j, 3 - i)
    assert vol.hu.dtype == np.int16 and vol.hu[1, 1, 2] == 500 and vol.hu[0, 3, 3] == -1024
    assert int((vol.hu == 0).sum()) == 30
    assert vol.pixel_mm == (0.5, 0.5) and vol.slice_thickness_mm == 3.0


def test_bad_files_get_one_line_errors(tmp_path: Path) -> None:
    def save(name: str, data, affine, code="scanner"):
        img = nib.Nifti1Image(data, affine)
        img.set_sform(affine, code=code)
        img.set_qform(affine, code=code)
        nib.save(img, str(tmp_path / name))
        return tmp_path / name

    ok = np.full((4, 4, 2), -1000, np.int16)
    with pytest.raises(nifti_input.NiftiInputError, match="orientation in the patient"):
        nifti_input.read_nifti_ct(save("none.nii", ok, np.eye(4), code="unknown"))
    tilt = np.eye(4)
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    tilt[1:3, 1:3] = [[c, -s], [s, c]]
    with pytest.raises(nifti_input.NiftiInputError, match="oblique"):
        nifti_input.read_nifti_ct(save("tilt.nii", ok, tilt))
    with pytest.raises(nifti_input.NiftiInputError, match="not HU"):
        nifti_input.read_nifti_ct(save("raw.nii", np.full((4, 4, 2), 24, np.int16), np.eye(4)))
    with pytest.raises(nifti_input.NiftiInputError, match="3D"):
        nifti_input.read_nifti_ct(save("flat.nii", np.zeros((4, 4, 2, 3), np.int16), np.eye(4)))
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(nifti_input.NiftiInputError, match="not a readable"):
        nifti_input.read_nifti_ct(tmp_path / "junk.nii.gz")
    with pytest.raises(FileNotFoundError):
        nifti_input.read_nifti_ct(tmp_path / "missing.nii")
