"""Tests for dinolg_jax.inference.nifti, read back with an independent offset-based parser."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from dinolg_jax.inference import nifti


def _parse(raw: bytes) -> dict:
    """Reads the NIfTI-1 fields straight from their byte offsets in the standard."""

    def i32(off):
        return struct.unpack_from("<i", raw, off)[0]

    def i16(off, n=1):
        v = struct.unpack_from(f"<{n}h", raw, off)
        return v if n > 1 else v[0]

    def f32(off, n=1):
        v = struct.unpack_from(f"<{n}f", raw, off)
        return v if n > 1 else v[0]

    return {
        "sizeof_hdr": i32(0),
        "dim": i16(40, 8),
        "datatype": i16(70),
        "bitpix": i16(72),
        "pixdim": f32(76, 8),
        "vox_offset": f32(108),
        "scl_slope": f32(112),
        "xyzt_units": raw[123],
        "cal_max": f32(124),
        "cal_min": f32(128),
        "descrip": raw[148:228].rstrip(b"\x00"),
        "qform_code": i16(252),
        "sform_code": i16(254),
        "quatern": f32(256, 3),
        "qoffset": f32(268, 3),
        "srow": np.array([f32(280, 4), f32(296, 4), f32(312, 4)]),
        "intent_name": raw[328:344].rstrip(b"\x00"),
        "magic": raw[344:348],
        "extension": raw[348:352],
    }


def test_label_volume_header_and_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vol = rng.integers(0, 5, (4, 6, 10)).astype(np.uint8)  # [Z, H, W]
    z_mm = np.array([-50.0, -47.5, -45.0, -42.5])
    aff = nifti.ras_affine((0.7, 0.8), z_mm=z_mm, origin_xy_lps_mm=(-100.0, 20.0))
    path = nifti.write_nifti(tmp_path / "a.nii", vol, aff, description="test", intent_name="labels")
    raw = path.read_bytes()
    h = _parse(raw)
    assert h["sizeof_hdr"] == 348
    assert h["magic"] == b"n+1\x00"
    assert h["extension"] == b"\x00\x00\x00\x00"
    assert h["dim"] == (3, 10, 6, 4, 1, 1, 1, 1)  # (W, H, Z): column index fastest
    assert h["datatype"] == 2 and h["bitpix"] == 8
    np.testing.assert_allclose(h["pixdim"][:4], (1.0, 0.8, 0.7, 2.5), rtol=1e-6)
    assert h["vox_offset"] == 352.0
    assert h["scl_slope"] == 1.0
    assert h["xyzt_units"] == 2
    assert (h["cal_min"], h["cal_max"]) == (0.0, 4.0)
    assert h["qform_code"] == 1 and h["sform_code"] == 1
    np.testing.assert_allclose(h["quatern"], (0.0, 0.0, 1.0), atol=1e-7)  # diag(-1,-1,1)
    np.testing.assert_allclose(h["qoffset"], (100.0, -20.0, -50.0))
    # LPS -> RAS: x and y flip; voxel (i, j, k) = (col, row, slice).
    expected = np.array([[-0.8, 0, 0, 100.0], [0, -0.7, 0, -20.0], [0, 0, 2.5, -50.0]], np.float32)
    np.testing.assert_allclose(h["srow"], expected, rtol=1e-6)
    assert h["descrip"] == b"test" and h["intent_name"] == b"labels"
    assert len(raw) == 352 + vol.size
    data = np.frombuffer(raw, np.uint8, offset=352)
    # Fortran order of [W, H, Z] == C order of [Z, H, W].
    np.testing.assert_array_equal(data.reshape(10, 6, 4, order="F"), vol.transpose(2, 1, 0))
    # Voxel (col=3, row=2, slice=1) of the world: RAS of LPS (-100 + 3*0.8, 20 + 2*0.7, -47.5).
    ras = h["srow"] @ np.array([3, 2, 1, 1.0])
    np.testing.assert_allclose(ras, (100 - 2.4, -(20 + 1.4), -47.5), rtol=1e-6)


def test_gzip_int16_round_trip_and_determinism(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vol = rng.integers(-1024, 2000, (3, 5, 7)).astype(np.int16)
    aff = nifti.ras_affine((0.5, 0.5), slice_thickness_mm=3.0)
    a = nifti.write_nifti(tmp_path / "a.nii.gz", vol, aff)
    b = nifti.write_nifti(tmp_path / "b.nii.gz", vol, aff)
    assert a.read_bytes() == b.read_bytes()  # mtime 0: same input, same bytes
    raw = gzip.decompress(a.read_bytes())
    h = _parse(raw)
    assert h["datatype"] == 4 and h["bitpix"] == 16
    assert h["dim"][:4] == (3, 7, 5, 3)
    got = np.frombuffer(raw, "<i2", offset=352).reshape(3, 5, 7)
    np.testing.assert_array_equal(got, vol)
    back, hdr = nifti.read_nifti(a)
    np.testing.assert_array_equal(back, vol)
    assert back.dtype == np.int16
    np.testing.assert_allclose(hdr["affine"], aff, rtol=1e-6)
    assert hdr["affine"][2, 3] == 0.0  # first slice at z = 0


def test_uneven_z_and_bad_inputs(tmp_path: Path) -> None:
    z = [0.0, 3.0, 9.0]  # a missing slice
    with pytest.raises(nifti.NiftiError, match="not evenly spaced"):
        nifti.ras_affine((1.0, 1.0), z_mm=z)
    aff = nifti.ras_affine((1.0, 1.0), z_mm=z, allow_uneven_z=True)
    assert aff[2, 2] == pytest.approx(4.5)
    with pytest.raises(nifti.NiftiError, match="ascending"):
        nifti.ras_affine((1.0, 1.0), z_mm=[3.0, 0.0])
    with pytest.raises(nifti.NiftiError, match="positive"):
        nifti.ras_affine((0.0, 1.0), slice_thickness_mm=1.0)
    with pytest.raises(nifti.NiftiError, match="dtype"):
        nifti.write_nifti(tmp_path / "x.nii", np.zeros((1, 2, 2), np.complex64), aff)
    with pytest.raises(nifti.NiftiError, match=r"\[Z, H, W\]"):
        nifti.write_nifti(tmp_path / "x.nii", np.zeros((2, 2), np.uint8), aff)
    with pytest.raises(nifti.NiftiError, match=r"\.nii"):
        nifti.write_nifti(tmp_path / "x.img", np.zeros((1, 2, 2), np.uint8), aff)
