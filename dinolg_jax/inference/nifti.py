"""A minimal NIfTI-1 writer (and reader) for CT and label volumes, numpy + struct only.

Written files open in 3D Slicer, ITK-SNAP and nibabel. Layout: one ``.nii`` file (or
``.nii.gz``, gzip with mtime 0 so the bytes are deterministic): the 348-byte header, a
4-byte extension flag (all zero: no extensions), then the voxels at ``vox_offset = 352``.

Axes and orientation (the convention of this project):

* Our volumes are ``[Z, H, W]`` C-order (slice, row, column), z ascending (slice 0 the
  most inferior). NIfTI stores the first index fastest, so the file's voxel axes are
  ``i = column, j = row, k = slice`` with ``dim = (3, W, H, Z)``; the bytes are exactly
  ``volume.tobytes()`` (no transpose).
* World coordinates are NIfTI's RAS+ (+x towards the patient's Right, +y Anterior, +z
  Superior), built from DICOM's LPS+ patient coordinates (+x Left, +y Posterior, +z
  Superior) of an axial series (ImageOrientationPatient = (1,0,0, 0,1,0)): a column step
  moves +x_LPS, a row step +y_LPS and a slice step +z. RAS = (-x_LPS, -y_LPS, z), so::

      srow_x = [-col_mm, 0,       0,     -x0_lps]
      srow_y = [0,       -row_mm, 0,     -y0_lps]
      srow_z = [0,       0,       dz_mm,  z_mm[0]]

  with ``(x0_lps, y0_lps)`` the LPS position of the first voxel's centre (DICOM
  ImagePositionPatient x, y; default 0, since the loaders keep only z) and ``dz_mm`` the
  z-step. The same affine is written as sform and as qform (codes 1, scanner-anatomical;
  the qform quaternion of diag(-1, -1, 1) is (b, c, d) = (0, 0, 1), qfac = 1).
* The z-step comes from ``z_mm`` (positions must be ascending and evenly spaced within
  ``z_tolerance_mm``; a series with a gap raises :class:`NiftiError` unless
  ``allow_uneven_z``, which then uses the mean step) or, without ``z_mm``, from
  ``slice_thickness_mm`` with the first slice at z = 0.
* Units: ``xyzt_units = 2`` (mm). No intensity scaling (``scl_slope = 1, scl_inter = 0``);
  ``cal_min / cal_max`` are the data range, so a label volume shows all its classes.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HEADER_SIZE = 348
VOX_OFFSET = 352  # header + 4-byte extension flag
MAGIC_SINGLE = b"n+1\x00"
UNITS_MM = 2
XFORM_SCANNER = 1

# numpy dtype -> (NIfTI datatype code, bitpix)
DATATYPES: dict[np.dtype, tuple[int, int]] = {
    np.dtype(np.uint8): (2, 8),
    np.dtype(np.int16): (4, 16),
    np.dtype(np.int32): (8, 32),
    np.dtype(np.float32): (16, 32),
    np.dtype(np.float64): (64, 64),
    np.dtype(np.int8): (256, 8),
    np.dtype(np.uint16): (512, 16),
}
_CODE_TO_DTYPE = {code: dt for dt, (code, _) in DATATYPES.items()}

# The 348-byte NIfTI-1 header, little endian, field by field (offsets in comments).
_HEADER = struct.Struct(
    "<"
    "i"  # 0   sizeof_hdr
    "10s"  # 4   data_type (unused)
    "18s"  # 14  db_name (unused)
    "i"  # 32  extents
    "h"  # 36  session_error
    "c"  # 38  regular
    "B"  # 39  dim_info
    "8h"  # 40  dim
    "3f"  # 56  intent_p1..3
    "h"  # 68  intent_code
    "h"  # 70  datatype
    "h"  # 72  bitpix
    "h"  # 74  slice_start
    "8f"  # 76  pixdim
    "f"  # 108 vox_offset
    "f"  # 112 scl_slope
    "f"  # 116 scl_inter
    "h"  # 120 slice_end
    "B"  # 122 slice_code
    "B"  # 123 xyzt_units
    "f"  # 124 cal_max
    "f"  # 128 cal_min
    "f"  # 132 slice_duration
    "f"  # 136 toffset
    "i"  # 140 glmax
    "i"  # 144 glmin
    "80s"  # 148 descrip
    "24s"  # 228 aux_file
    "h"  # 252 qform_code
    "h"  # 254 sform_code
    "6f"  # 256 quatern_b, c, d, qoffset_x, y, z
    "4f"  # 280 srow_x
    "4f"  # 296 srow_y
    "4f"  # 312 srow_z
    "16s"  # 328 intent_name
    "4s"  # 344 magic
)
assert _HEADER.size == HEADER_SIZE


class NiftiError(ValueError):
    """A volume or geometry that cannot be written, or a file that is not NIfTI-1."""


def ras_affine(
    pixel_mm: Sequence[float],
    *,
    z_mm: Sequence[float] | None = None,
    slice_thickness_mm: float | None = None,
    origin_xy_lps_mm: Sequence[float] = (0.0, 0.0),
    z_tolerance_mm: float = 0.01,
    allow_uneven_z: bool = False,
) -> np.ndarray:
    """The voxel (i=col, j=row, k=slice) -> RAS mm affine of an axial series (see module doc).

    Args:
      pixel_mm: (row, col) pixel spacing, mm.
      z_mm: [Z] ascending slice positions, mm; or None to use ``slice_thickness_mm``.
      slice_thickness_mm: the z-step when ``z_mm`` is None (or has one slice).
      origin_xy_lps_mm: LPS (x, y) of the first voxel's centre, mm.
      z_tolerance_mm: largest allowed deviation of a z-step from the mean step.
      allow_uneven_z: use the mean step for unevenly spaced slices instead of raising.

    Returns:
      float64 [4, 4].

    Raises:
      NiftiError: non-positive spacing, non-ascending z, or uneven z without
        ``allow_uneven_z``.
    """
    row_mm, col_mm = (float(v) for v in pixel_mm)
    if not (row_mm > 0 and col_mm > 0 and math.isfinite(row_mm * col_mm)):
        raise NiftiError(f"pixel spacing must be positive, got {tuple(pixel_mm)}")
    z0, dz = 0.0, slice_thickness_mm
    if z_mm is not None and len(z_mm) >= 1:
        z = np.asarray(z_mm, np.float64)
        z0 = float(z[0])
        if z.size >= 2:
            steps = np.diff(z)
            if np.any(steps <= 0):
                raise NiftiError("z_mm must be strictly ascending")
            dz = float((z[-1] - z[0]) / (z.size - 1))
            worst = float(np.max(np.abs(steps - dz)))
            if worst > z_tolerance_mm and not allow_uneven_z:
                raise NiftiError(
                    f"slices are not evenly spaced (a step differs from the mean {dz:.4f} mm "
                    f"by {worst:.4f} mm); pass allow_uneven_z=True to use the mean step"
                )
    if dz is None or not float(dz) > 0:
        raise NiftiError(f"need a positive z-step (z_mm or slice_thickness_mm), got {dz!r}")
    x0, y0 = (float(v) for v in origin_xy_lps_mm)
    return np.array(
        [
            [-col_mm, 0.0, 0.0, -x0],
            [0.0, -row_mm, 0.0, -y0],
            [0.0, 0.0, float(dz), z0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def _quaternion(affine: np.ndarray) -> tuple[tuple[float, float, float], float]:
    """(b, c, d) and qfac of the rotation part of ``affine`` (nifti1_io's method)."""
    m = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    qfac = 1.0
    if np.linalg.det(m) < 0:
        m[:, 2] = -m[:, 2]
        qfac = -1.0
    trace = m[0, 0] + m[1, 1] + m[2, 2] + 1.0
    if trace > 0.5:
        a = 0.5 * math.sqrt(trace)
        b = 0.25 * (m[2, 1] - m[1, 2]) / a
        c = 0.25 * (m[0, 2] - m[2, 0]) / a
        d = 0.25 * (m[1, 0] - m[0, 1]) / a
    else:
        xd = 1.0 + m[0, 0] - (m[1, 1] + m[2, 2])
        yd = 1.0 + m[1, 1] - (m[0, 0] + m[2, 2])
        zd = 1.0 + m[2, 2] - (m[0, 0] + m[1, 1])
        if xd > 1.0:
            b = 0.5 * math.sqrt(xd)
            c = 0.25 * (m[0, 1] + m[1, 0]) / b
            d = 0.25 * (m[0, 2] + m[2, 0]) / b
            a = 0.25 * (m[2, 1] - m[1, 2]) / b
        elif yd > 1.0:
            c = 0.5 * math.sqrt(yd)
            b = 0.25 * (m[0, 1] + m[1, 0]) / c
            d = 0.25 * (m[1, 2] + m[2, 1]) / c
            a = 0.25 * (m[0, 2] - m[2, 0]) / c
        else:
            d = 0.5 * math.sqrt(zd)
            b = 0.25 * (m[0, 2] + m[2, 0]) / d
            c = 0.25 * (m[1, 2] + m[2, 1]) / d
            a = 0.25 * (m[1, 0] - m[0, 1]) / d
        if a < 0:
            b, c, d = -b, -c, -d
    return (float(b), float(c), float(d)), qfac


def _text(value: str, size: int) -> bytes:
    raw = value.encode("ascii", errors="replace")
    return raw[: size - 1].ljust(size, b"\x00")


def nifti_bytes(
    volume: np.ndarray, affine: np.ndarray, *, description: str = "", intent_name: str = ""
) -> bytes:
    """The uncompressed ``.nii`` bytes of a [Z, H, W] volume with a voxel -> RAS affine.

    Args:
      volume: [Z, H, W] array of a dtype in :data:`DATATYPES` (uint8 labels, int16 HU...).
      affine: [4, 4] voxel (i=col, j=row, k=slice) -> RAS mm, e.g. from :func:`ras_affine`.
      description: up to 79 ASCII characters (``descrip``); never put identifiers here.
      intent_name: up to 15 ASCII characters (e.g. "labels").

    Returns:
      Header, extension flag and C-order little-endian voxel bytes.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise NiftiError(f"volume must be [Z, H, W], got shape {vol.shape}")
    dtype = vol.dtype.newbyteorder("=") if vol.dtype.byteorder not in "=|" else vol.dtype
    if np.dtype(dtype) not in DATATYPES:
        raise NiftiError(
            f"dtype {vol.dtype} not supported; use one of {sorted(map(str, DATATYPES))}"
        )
    code, bitpix = DATATYPES[np.dtype(dtype)]
    affine = np.asarray(affine, np.float64)
    if affine.shape != (4, 4):
        raise NiftiError(f"affine must be [4, 4], got {affine.shape}")
    z, h, w = vol.shape
    spacing = np.linalg.norm(affine[:3, :3], axis=0)  # (col, row, slice) mm
    (qb, qc, qd), qfac = _quaternion(affine)
    lo = float(vol.min()) if vol.size else 0.0
    hi = float(vol.max()) if vol.size else 0.0
    header = _HEADER.pack(
        HEADER_SIZE,
        b"",
        b"",
        0,
        0,
        b"r",
        0,
        *(3, w, h, z, 1, 1, 1, 1),
        0.0,
        0.0,
        0.0,
        0,
        code,
        bitpix,
        0,
        *(qfac, *spacing, 0.0, 0.0, 0.0, 0.0),
        float(VOX_OFFSET),
        1.0,
        0.0,
        0,
        0,
        UNITS_MM,
        hi,
        lo,
        0.0,
        0.0,
        0,
        0,
        _text(description, 80),
        b"",
        XFORM_SCANNER,
        XFORM_SCANNER,
        qb,
        qc,
        qd,
        *affine[:3, 3],
        *affine[0],
        *affine[1],
        *affine[2],
        _text(intent_name, 16),
        MAGIC_SINGLE,
    )
    data = np.ascontiguousarray(vol, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return header + b"\x00\x00\x00\x00" + data


def write_nifti(
    path: str | os.PathLike,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    description: str = "",
    intent_name: str = "",
) -> Path:
    """Writes ``volume`` [Z, H, W] as NIfTI-1; gzip-compressed when the name ends in ``.gz``.

    The gzip stream has mtime 0 and no file name, so equal inputs give equal bytes. The
    file is written to a temporary name and renamed, so a reader never sees half a file.

    Returns:
      The path written.
    """
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise NiftiError(f"file name must end in .nii or .nii.gz, got {path.name!r}")
    raw = nifti_bytes(volume, affine, description=description, intent_name=intent_name)
    if path.name.endswith(".gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as f:
            f.write(raw)
        raw = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(raw)
    tmp.replace(path)
    return path


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Reads a single-file NIfTI-1 volume written by :func:`write_nifti` (3D, no scaling).

    Returns:
      (volume [Z, H, W] in the file's dtype, header dict with ``dim``, ``pixdim``,
      ``datatype``, ``vox_offset``, ``affine`` [4, 4] (the sform), ``descrip``...).

    Raises:
      NiftiError: not a little-endian single-file NIfTI-1, not 3D, or truncated.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < HEADER_SIZE:
        raise NiftiError(f"{Path(path).name}: shorter than a NIfTI-1 header")
    f = _HEADER.unpack_from(raw)
    if f[0] != HEADER_SIZE or f[-1] != MAGIC_SINGLE:
        raise NiftiError(f"{Path(path).name}: not a little-endian single-file NIfTI-1")
    dim = f[7:15]
    datatype = f[19]
    pixdim = f[22:30]
    vox_offset = int(f[30])
    if dim[0] != 3:
        raise NiftiError(f"{Path(path).name}: expected a 3D volume, dim = {dim}")
    if datatype not in _CODE_TO_DTYPE:
        raise NiftiError(f"{Path(path).name}: unsupported datatype {datatype}")
    dtype = _CODE_TO_DTYPE[datatype].newbyteorder("<")
    w, h, z = dim[1:4]
    n = w * h * z * dtype.itemsize
    if len(raw) < vox_offset + n:
        raise NiftiError(f"{Path(path).name}: truncated voxel data")
    vol = np.frombuffer(raw, dtype, count=w * h * z, offset=vox_offset).reshape(z, h, w)
    srow = np.array([f[52:56], f[56:60], f[60:64], (0.0, 0.0, 0.0, 1.0)], np.float64)
    header = {
        "dim": tuple(int(d) for d in dim),
        "pixdim": tuple(float(p) for p in pixdim),
        "datatype": int(datatype),
        "bitpix": int(f[20]),
        "vox_offset": vox_offset,
        "qform_code": int(f[44]),
        "sform_code": int(f[45]),
        "quatern": tuple(float(q) for q in f[46:49]),
        "affine": srow,
        "xyzt_units": int(f[35]),
        "descrip": f[42].rstrip(b"\x00").decode("ascii", "replace"),
        "intent_name": f[64].rstrip(b"\x00").decode("ascii", "replace"),
    }
    return vol.astype(vol.dtype.newbyteorder("=")), header
