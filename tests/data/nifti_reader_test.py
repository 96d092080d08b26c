"""data.nifti_reader: NIfTI CT / labels -> the canonical layout, refusals with the file named.

References: hand-built volumes with hand-written affines (the canonical array each one
must give is written out by index arithmetic), and SimpleITK's own world coordinates for
a tilted-within-tolerance file.
"""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dinolg_jax.data import nifti_reader


def _save(path, data, affine, **header):
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def _volume(shape=(4, 3, 2)):
    """int16 [i, j, k] with a unique value per voxel, with air."""
    return (np.arange(np.prod(shape)).reshape(shape) * 7 - 1000).astype(np.int16)


def test_ras_file_is_flipped_in_plane_and_keeps_world_positions(tmp_path):
    data = _volume()  # i: 4, j: 3, k: 2
    affine = np.diag([0.5, 0.6, 2.0, 1.0])  # RAS: i -> +x_RAS = -x_LPS, j -> -y_LPS
    affine[:3, 3] = (10.0, -20.0, 30.0)
    path = _save(tmp_path / "a.nii.gz", data, affine)
    vol = nifti_reader.read_nifti_volume(path)
    stored = nib.load(str(path)).affine  # as written (float32)
    # canonical [k, row, col]: row = j reversed, col = i reversed
    expected = np.transpose(data, (2, 1, 0))[:, ::-1, ::-1]
    np.testing.assert_array_equal(vol.data, expected)
    assert vol.reorientation == "row and column reversed"
    g = vol.geometry
    assert g.pixel_mm == pytest.approx((0.6, 0.5)) and g.slice_thickness_mm == 2.0
    # canonical voxel (k, r, c) = file voxel (i = 3 - c, j = 2 - r, k): same world point.
    for k, r, c in [(0, 0, 0), (1, 2, 3), (1, 1, 2)]:
        ras = stored @ np.array([3 - c, 2 - r, k, 1.0])
        np.testing.assert_allclose(g.world_mm(k, r, c), [-ras[0], -ras[1], ras[2]])


def test_swapped_axes_and_descending_slices(tmp_path):
    data = _volume((3, 4, 5))
    # i -> +y_LPS (row), j -> +x_LPS (column), k -> -z (slices stored superior first)
    affine = np.zeros((4, 4))
    affine[:3, :3] = [[0, -0.8, 0], [-0.7, 0, 0], [0, 0, -3.0]]
    affine[3, 3] = 1.0
    vol = nifti_reader.read_nifti_volume(_save(tmp_path / "b.nii", data, affine))
    expected = np.transpose(data, (2, 0, 1))[::-1]
    np.testing.assert_array_equal(vol.data, expected)
    assert vol.geometry.pixel_mm == pytest.approx((0.7, 0.8))
    assert np.all(np.diff(vol.geometry.z_mm) == pytest.approx(3.0))


def test_world_positions_match_simpleitk_for_a_slightly_tilted_file(tmp_path):
    data = _volume((6, 5, 3))
    t = np.radians(0.5)  # within the 1 degree tolerance: no resampling, kept as tilted
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.9, 0.9, 2.5])
    affine[:3, 3] = (5.0, 7.0, -11.0)
    path = _save(tmp_path / "c.nii.gz", data, affine)
    vol = nifti_reader.read_nifti_volume(path)
    img = sitk.ReadImage(str(path))
    for k, r, c in np.ndindex(vol.data.shape):
        idx = img.TransformPhysicalPointToContinuousIndex(vol.geometry.world_mm(k, r, c).tolist())
        i, j, kk = np.rint(idx).astype(int)
        assert np.allclose(idx, (i, j, kk), atol=1e-4)
        assert sitk.GetArrayViewFromImage(img)[kk, j, i] == vol.data[k, r, c]


def test_scaled_float_values_rounded_and_counted(tmp_path):
    data = np.array([[[-1000.0, 0.4], [1.5, 2.5]]], np.float32).reshape(2, 2, 1)
    vol = nifti_reader.read_nifti_volume(_save(tmp_path / "f.nii", data, np.eye(4)))
    assert sorted(vol.data.ravel().tolist()) == [-1000, 0, 2, 2]  # half to even
    assert vol.rounded_voxels == 3


@pytest.mark.parametrize(
    ("data", "affine", "labels", "message"),
    [
        (np.full((2, 2, 2), 50, np.int16), np.eye(4), False, "no value below -200"),
        (np.full((2, 2, 2), 4e4, np.float32), np.eye(4), False, "does not fit int16"),
        (np.zeros((2, 2, 2, 2), np.int16), np.eye(4), False, "expected a 3D volume"),
        (np.full((2, 2, 2), 300, np.int16), np.eye(4), True, "labels must lie in 0 .. 255"),
        (np.full((2, 2, 2), -1, np.int16), np.eye(4), True, "labels must lie in 0 .. 255"),
        (np.full((2, 2, 2), 0.5, np.float32), np.eye(4), True, "label 0.5 is not a whole"),
    ],
)
def test_refusals_name_the_file(tmp_path, data, affine, labels, message):
    path = _save(tmp_path / "bad.nii", data, affine)
    with pytest.raises(nifti_reader.NiftiReadError, match=message) as e:
        nifti_reader.read_nifti_volume(path, labels=labels)
    assert "bad.nii" in str(e.value)


def test_oblique_and_damaged_files_refused(tmp_path):
    t = np.radians(10.0)
    affine = np.eye(4)
    affine[:3, :3] = [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]
    path = _save(tmp_path / "obl.nii", _volume(), affine)
    with pytest.raises(nifti_reader.NiftiReadError, match="oblique"):
        nifti_reader.read_nifti_volume(path)
    good = _save(tmp_path / "g.nii.gz", _volume(), np.eye(4))
    blob = good.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(nifti_reader.NiftiReadError, match=r"cut\.nii\.gz: not a readable NIfTI"):
        nifti_reader.read_nifti_volume(tmp_path / "cut.nii.gz")
    # labels as float with whole values are fine
    mask = _save(
        tmp_path / "m.nii", np.array([0, 1, 2, 255], np.float32).reshape(2, 2, 1), np.eye(4)
    )
    assert sorted(nifti_reader.read_nifti_volume(mask, labels=True).data.ravel()) == [0, 1, 2, 255]


def test_no_orientation_wrong_name_and_missing_file_refused(tmp_path):
    """The rules the inference reader had are the data reader's too (one reader)."""
    img = nib.Nifti1Image(_volume(), np.eye(4))
    img.set_sform(np.eye(4), code=0)
    img.set_qform(np.eye(4), code=0)
    nib.save(img, str(tmp_path / "none.nii"))
    with pytest.raises(nifti_reader.NiftiReadError, match=r"none\.nii: neither sform nor qform"):
        nifti_reader.read_nifti_volume(tmp_path / "none.nii")
    good = _save(tmp_path / "g.nii", _volume(), np.eye(4))
    (tmp_path / "g.img").write_bytes(good.read_bytes())
    with pytest.raises(nifti_reader.NiftiReadError, match=r"g\.img: not a NIfTI file name"):
        nifti_reader.read_nifti_volume(tmp_path / "g.img")
    with pytest.raises(nifti_reader.NiftiMissingError, match=r"gone\.nii: no such file") as e:
        nifti_reader.read_nifti_volume(tmp_path / "gone.nii", name="gone.nii")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([0.5, 0.6, 2.0, 1.0]),
        np.array([[0, -0.8, 0, 0], [-0.7, 0, 0, 0], [0, 0, -3.0, 0], [0, 0, 0, 1.0]]),
        np.array([[0, 0, 2.0, 0], [0.7, 0, 0, 0], [0, -0.9, 0, 0], [0, 0, 0, 1.0]]),
    ],
)
def test_to_file_layout_inverts_the_read(tmp_path, affine):
    """Canonical -> file order gives back the stored array, and the axes / flips recorded
    are those the file's affine implies (checked against nibabel's own orientation codes)."""
    data = _volume((4, 3, 5))
    vol = nifti_reader.read_nifti_volume(_save(tmp_path / "a.nii", data, affine))
    np.testing.assert_array_equal(nifti_reader.to_file_layout(vol.data, vol.axes, vol.flips), data)
    assert vol.file_shape == data.shape
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    codes = nib.aff2axcodes(affine)  # RAS letters of each file axis' positive direction
    # canonical (slice, row, column) run towards S, P, L (LPS+): a file axis is reversed
    # when it runs the other way (I, A, R).
    for axis, flip, want in zip(vol.axes, vol.flips, "SPL", strict=True):
        assert codes[axis] == (want if not flip else {"S": "I", "P": "A", "L": "R"}[want])
