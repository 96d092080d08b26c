"""NIfTI output and geometry against SimpleITK, an independent DICOM and NIfTI reader.

Hand-built DICOM series (canonical, flipped, mirrored, swapped; unequal pixel spacing,
non-square slices, an off-centre origin) are read by ``data.dicom`` and written by
``inference.nifti``; SimpleITK reads the DICOM series itself (GDCM) and the NIfTI file.
The world coordinates of corner voxels must agree within 0.01 mm and the HU at the same
world point must be equal.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from fake_ct import make_ct

from dinolg_jax.data import dicom
from dinolg_jax.data.volume import Geometry
from dinolg_jax.inference import nifti

TOL_MM = 0.01
ORIENTATIONS = {
    "canonical": (1, 0, 0, 0, 1, 0),
    "rot180": (-1, 0, 0, 0, -1, 0),
    "mirror": (-1, 0, 0, 0, 1, 0),
    "swapped": (0, 1, 0, 1, 0, 0),
}


def _series(folder: Path, iop, zs=(-30.0, -27.0, -24.0, -21.0)) -> None:
    rng = np.random.default_rng(7)
    for k, z in enumerate(zs):  # written in a shuffled file order
        px = rng.integers(0, 3000, (16, 12)).astype(np.uint16)  # 16 rows, 12 columns
        make_ct(
            folder / f"f{(5 * k) % 7}.dcm",
            z=z,
            instance=k + 1,
            pixels=px,
            iop=iop,
            spacing=(0.4, 0.55),
            ipp_xy=(-100.25, 37.5),
        )


def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_world_corners_and_hu_agree_with_simpleitk(tmp_path: Path, name: str) -> None:
    _series(tmp_path / "dcm", ORIENTATIONS[name])
    vol = dicom.read_series(tmp_path / "dcm")
    ct_path, _ = nifti.write_study(
        tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz", vol, (vol.hu > 500).astype(np.uint8)
    )
    ref = _sitk_series(tmp_path / "dcm")  # GDCM's own reading of the files
    out = sitk.ReadImage(str(ct_path))  # ITK's NIfTI reader (RAS -> LPS)
    z, h, w = vol.hu.shape
    assert out.GetSize() == (w, h, z)
    # SimpleITK reads the files as stored (its own axes), we read them canonical.
    stored_axes = np.asarray(ref.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(stored_axes[:, 0], ORIENTATIONS[name][:3], atol=1e-9)
    np.testing.assert_allclose(stored_axes[:, 1], ORIENTATIONS[name][3:], atol=1e-9)
    assert vol.source.reorientation.is_identity == (name == "canonical")
    for k in (0, z - 1):
        for r in (0, h - 1):
            for c in (0, w - 1):
                ours = vol.geometry.world_mm(k, r, c)
                np.testing.assert_allclose(
                    out.TransformIndexToPhysicalPoint((c, r, k)), ours, atol=TOL_MM
                )
                idx = ref.TransformPhysicalPointToIndex(tuple(float(v) for v in ours))
                np.testing.assert_allclose(
                    ref.TransformIndexToPhysicalPoint(idx), ours, atol=TOL_MM
                )
                assert ref[idx] == vol.hu[k, r, c] == out[c, r, k]
    # Every voxel: the DICOM resampled (nearest) onto the NIfTI grid is our volume.
    resampled = sitk.Resample(ref, out, sitk.Transform(), sitk.sitkNearestNeighbor, -5000)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), vol.hu)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), vol.hu)


def test_label_file_shares_the_ct_grid(tmp_path: Path) -> None:
    _series(tmp_path / "dcm", ORIENTATIONS["rot180"])
    vol = dicom.read_series(tmp_path / "dcm")
    labels = np.zeros(vol.hu.shape, np.uint8)
    labels[1, 2:4, 3:7] = 2
    labels[3, 10, 1] = 4
    ct_path, lab_path = nifti.write_study(
        tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz", vol, labels, note="gated"
    )
    ct, lab = nib.load(ct_path), nib.load(lab_path)
    assert ct.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(ct.affine, lab.affine)
    for img in (ct, lab):
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-5)
    assert lab.header.get_intent()[0] == "label"
    back, _ = nifti.read_nifti(lab_path)
    np.testing.assert_array_equal(back, labels)
    sitk_lab = sitk.GetArrayFromImage(sitk.ReadImage(str(lab_path)))
    np.testing.assert_array_equal(sitk_lab, labels)
    assert b"LAD" in gzip.decompress(lab_path.read_bytes())[148:228]


def test_gzip_is_byte_deterministic_and_bytes_are_the_volume(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vol = rng.integers(-1024, 3000, (3, 5, 7)).astype(np.int16)
    geo = Geometry.axial((0.5, 0.5), [0.0, 3.0, 6.0], 3.0, origin_xy_mm=(-120.0, 40.0))
    aff = nifti.ras_affine(geo)
    a = nifti.write_nifti(tmp_path / "a.nii.gz", vol, aff)
    b = nifti.write_nifti(tmp_path / "sub" / "b.nii.gz", vol, aff)
    assert a.read_bytes() == b.read_bytes()
    raw = gzip.decompress(a.read_bytes())
    assert raw[352:] == vol.tobytes()  # [Z, H, W] C order = NIfTI's i-fastest order
    np.testing.assert_allclose(
        aff, [[-0.5, 0, 0, 120.0], [0, -0.5, 0, -40.0], [0, 0, 3.0, 0.0], [0, 0, 0, 1]]
    )
    plain = nifti.write_nifti(tmp_path / "a.nii", vol, aff)
    assert plain.read_bytes() == raw


def test_uneven_z_and_bad_inputs(tmp_path: Path) -> None:
    geo = Geometry.axial((1.0, 1.0), [0.0, 3.0, 9.0], 3.0)  # a missing slice
    with pytest.raises(nifti.NiftiError, match="not evenly spaced"):
        nifti.ras_affine(geo)
    aff = nifti.ras_affine(geo, allow_uneven_z=True)
    assert aff[2, 2] == pytest.approx(4.5)
    with pytest.raises(nifti.NiftiError, match="dtype"):
        nifti.write_nifti(tmp_path / "x.nii", np.zeros((1, 2, 2), np.float32), aff)
    with pytest.raises(nifti.NiftiError, match=r"\.nii"):
        nifti.write_nifti(tmp_path / "x.img", np.zeros((1, 2, 2), np.uint8), aff)
    with pytest.raises(nifti.NiftiError, match="Z, H, W"):
        nifti.write_nifti(tmp_path / "x.nii", np.zeros((2, 2), np.uint8), aff)
