"""NIfTI-1 CT and label volumes through nibabel, on the study's real geometry.

The files open on top of the source DICOM in 3D Slicer, ITK-SNAP or any ITK-based viewer:
the affine is the volume's own ``Geometry`` (``data/volume.py``: ImagePositionPatient of
every slice, ImageOrientationPatient, PixelSpacing), converted from DICOM's LPS+ patient
coordinates to NIfTI's RAS+ (``RAS = diag(-1, -1, 1) @ LPS``).

* Voxel axes: our volumes are ``[Z, H, W]`` (slice, row, column); NIfTI's first index
  runs fastest, so the file's axes are ``i = column, j = row, k = slice`` with
  ``dim = (3, W, H, Z)`` and the voxel bytes are exactly ``volume.tobytes()``.
* Affine: ``RAS = diag(-1, -1, 1, 1) @ Geometry.affine_lps()``, written as the sform and
  the qform, both with code 1 (scanner-anatomical). Unevenly spaced slices (a missing
  slice) use the mean step with ``allow_uneven_z`` (the first and last slice are then
  where the header says; the others within half a step); otherwise they are refused.
* Types: CT as int16 HU, labels as uint8 (0 bg, 1 RCA, 2 LAD, 3 LCA, 4 LCX) with the
  NIfTI "label" intent; no intensity scaling (``scl_slope = 1, scl_inter = 0``);
  ``cal_min / cal_max`` are the data range; ``xyzt_units`` mm.
* ``.nii.gz`` is byte-deterministic: nibabel serialises the image to bytes and they are
  gzip-compressed with mtime 0 and no file name.
* A study read from NIfTI (``inference/nifti_input.py``: ``source`` a ``NiftiSource``)
  is written back on the input's own grid: its voxel order, dimensions and affine, so
  the outputs overlay the input file voxel for voxel.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from dinolg_jax.data.volume import CTVolume, Geometry

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
LABEL_NAMES = "0 bg 1 RCA 2 LAD 3 LCA 4 LCX"


class NiftiError(ValueError):
    """A volume or geometry that cannot be written, or a file that is not 3D NIfTI-1."""


def ras_affine(geometry: Geometry, *, allow_uneven_z: bool = False) -> np.ndarray:
    """float64 [4, 4]: voxel ``(i = column, j = row, k = slice, 1)`` -> RAS mm.

    Raises:
      NiftiError: unevenly spaced slices without ``allow_uneven_z``.
    """
    try:
        return LPS_TO_RAS @ geometry.affine_lps(allow_uneven=allow_uneven_z)
    except ValueError as e:
        raise NiftiError(f"{e}; pass allow_uneven_z=True to use the mean step") from e


def nifti_image(
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    description: str = "",
    labels: bool = False,
) -> nib.Nifti1Image:
    """A ``Nifti1Image`` of ``volume`` [Z, H, W] (int16 HU, or uint8 labels).

    Args:
      volume: [Z, H, W]; int16 (CT) or uint8 (labels).
      affine: [4, 4] voxel (i = column, j = row, k = slice) -> RAS, e.g. :func:`ras_affine`.
      description: up to 79 ASCII characters (``descrip``); never put identifiers here.
      labels: set the NIfTI "label" intent.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise NiftiError(f"volume must be [Z, H, W], got shape {vol.shape}")
    if vol.dtype not in (np.dtype(np.int16), np.dtype(np.uint8)):
        raise NiftiError(f"dtype {vol.dtype} not supported; use int16 (HU) or uint8 (labels)")
    affine = np.asarray(affine, np.float64)
    if affine.shape != (4, 4):
        raise NiftiError(f"affine must be [4, 4], got {affine.shape}")
    header = nib.Nifti1Header()
    header.set_data_dtype(vol.dtype)
    # (W, H, Z) view: nibabel writes Fortran order, i.e. the [Z, H, W] C-order bytes.
    img = nib.Nifti1Image(vol.T, affine, header)
    img.set_sform(affine, code="scanner")
    img.set_qform(affine, code="scanner")
    hdr = img.header
    hdr.set_xyzt_units("mm")
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"], hdr["cal_max"] = (float(vol.min()), float(vol.max())) if vol.size else (0, 0)
    hdr["descrip"] = description.encode("ascii", "replace")[:79]
    if labels:
        hdr.set_intent("label", name="labels")
    return img


def nifti_bytes(img: nib.Nifti1Image, *, compress: bool) -> bytes:
    """The ``.nii`` (or deterministic ``.nii.gz``) bytes of ``img``."""
    raw = img.to_bytes()
    if not compress:
        return raw
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as f:
        f.write(raw)
    return buf.getvalue()


def write_nifti(
    path: str | os.PathLike,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    description: str = "",
    labels: bool = False,
) -> Path:
    """Writes ``volume`` [Z, H, W] as NIfTI-1 (gzip when the name ends in ``.gz``).

    The file is written to a temporary name and renamed, so a reader never sees half a
    file; equal inputs give equal bytes.

    Returns:
      The path written.
    """
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise NiftiError(f"file name must end in .nii or .nii.gz, got {path.name!r}")
    img = nifti_image(volume, affine, description=description, labels=labels)
    data = nifti_bytes(img, compress=path.name.endswith(".gz"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _output_grid(volume: CTVolume):
    """(affine [4, 4], canonical [Z, H, W] -> array to write) of a study's outputs.

    A study read from NIfTI keeps the input file's affine and voxel order (written as
    the [K, J, I] array whose transpose is the file's (I, J, K) data); any other study
    gets :func:`ras_affine` of its canonical geometry.
    """
    src = volume.source
    if src is not None and hasattr(src, "to_file_layout") and hasattr(src, "affine"):
        return np.asarray(src.affine, np.float64), lambda v: src.to_file_layout(v).T
    return ras_affine(volume.geometry, allow_uneven_z=True), lambda v: v


def write_study(
    ct_path: str | os.PathLike | None,
    labels_path: str | os.PathLike | None,
    volume: CTVolume,
    labels: np.ndarray | None,
    *,
    note: str = "",
) -> list[Path]:
    """The study's CT (int16 HU) and/or label (uint8) NIfTI on its own grid.

    On its own grid: the DICOM series' geometry, or the input file's grid for a study
    read from NIfTI (module docstring).

    Args:
      ct_path, labels_path: where to write each (None: skip it).
      volume: the study (its ``hu`` and ``geometry``).
      labels: uint8 [Z, H, W] on the same grid (required when ``labels_path`` is set).
      note: appended to the label file's description (e.g. the mode).

    Returns:
      The paths written.
    """
    affine, layout = _output_grid(volume)
    out = []
    if ct_path is not None:
        out.append(
            write_nifti(
                ct_path, layout(np.asarray(volume.hu, np.int16)), affine, description="CT HU"
            )
        )
    if labels_path is not None:
        if labels is None or labels.shape != volume.hu.shape:
            raise NiftiError(
                f"labels must be {volume.hu.shape}, got {getattr(labels, 'shape', None)}"
            )
        description = f"CAC labels {LABEL_NAMES}" + (f" ({note})" if note else "")
        out.append(
            write_nifti(
                labels_path,
                layout(np.asarray(labels, np.uint8)),
                affine,
                description=description,
                labels=True,
            )
        )
    return out


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a 3D NIfTI-1 volume back as ``([Z, H, W] in the file's dtype, sform [4, 4])``.

    Raises:
      NiftiError: not a 3D NIfTI-1 file.
    """
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types
        raise NiftiError(f"{Path(path).name}: not a readable NIfTI file ({e})") from e
    if not isinstance(img, nib.Nifti1Image) or len(img.shape) != 3:
        raise NiftiError(f"{Path(path).name}: expected a 3D NIfTI-1 volume, got {img.shape}")
    data = np.asarray(img.dataobj)
    return np.ascontiguousarray(data.T), img.get_sform()
