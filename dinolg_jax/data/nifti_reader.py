"""A NIfTI volume (CT in HU, or an integer label mask) into the canonical `CTVolume` layout.

NIfTI stores voxels ``data[i, j, k]`` with an affine to RAS+ world millimetres; this
project's volumes are ``[Z, H, W]`` in DICOM's LPS+ world with a column step along +x
(patient left), a row step along +y (posterior) and slices z ascending
(``data/volume.py``). `read_nifti_volume` finds, for each file axis, the world axis it
runs along (``LPS = diag(-1, -1, 1) @ RAS``) and moves the voxels there by an exact
permutation: transpose the axes, then reverse those that run the wrong way. No voxel
is resampled, and every voxel keeps its world position (the canonical ``Geometry`` is
built from the file's affine, so ``Geometry.world_mm(k, r, c)`` is the file affine
applied to the voxel's original index).

This is the project's one NIfTI reader: ``data.folder_source`` reads CT and masks
through it for conversion, and ``inference.nifti_input`` builds the scored study (and
the way back to the file's grid, `to_file_layout`) on it.

Rules (a file breaking one is refused with `NiftiReadError`, the file named):

* The name ends in ``.nii`` or ``.nii.gz``; a missing file is `NiftiMissingError`
  (also a ``FileNotFoundError``).
* The affine is the sform when its code is set, else the qform (nibabel's
  ``img.affine``); a file with both codes 0 has no orientation in the patient and is
  refused. Every file axis must lie within ``AXIS_TOLERANCE_DEG`` of a distinct world
  axis; an oblique volume would need resampling and is refused.
* Values are the file's data with its ``scl_slope`` / ``scl_inter`` applied. CT: float
  values are rounded half to even to whole HU (the count of voxels that moved is in
  `NiftiVolume.rounded_voxels`); every value must be finite and fit int16, and some
  value must lie below ``AIR_MAX_HU`` (a CT in HU has air; a volume without is stored
  values or a normalised image). Labels: every value must be a whole number in
  0 .. 255 (records store uint8 labels); anything else is refused, naming the value.
* 3D files, or 4D ones whose extra axes have length 1; anything else is refused.

Only the voxels and the affine are read: NIfTI headers carry no patient identity, and
the description and intent fields are not used.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from dinolg_jax.data.volume import Geometry

AXIS_TOLERANCE_DEG = 1.0  # as the DICOM reader's axial tolerance (data/orientation.py)
AIR_MAX_HU = -200.0  # a CT in HU has air (about -1000 HU) somewhere below this
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
NIFTI_SUFFIXES = (".nii.gz", ".nii")

__all__ = [
    "AIR_MAX_HU",
    "AXIS_TOLERANCE_DEG",
    "NIFTI_SUFFIXES",
    "NiftiMissingError",
    "NiftiReadError",
    "NiftiVolume",
    "canonical_geometry",
    "nifti_stem",
    "read_nifti_volume",
    "to_file_layout",
]


class NiftiReadError(ValueError):
    """A file that is not a readable 3D NIfTI volume of the kind asked for (names the file)."""


class NiftiMissingError(NiftiReadError, FileNotFoundError):
    """No file at the path (a `NiftiReadError` and a ``FileNotFoundError``)."""


@dataclasses.dataclass(frozen=True)
class NiftiVolume:
    """One NIfTI file in the canonical layout.

    Attributes:
      data: int16 HU (CT) or uint8 labels, [Z, H, W], canonical layout.
      geometry: where each canonical voxel is (LPS mm).
      reorientation: what the permutation did, e.g. ``"axes (k, j, i) <- (2, 1, 0); i
        reversed"``; ``""`` when the file was already canonical.
      rounded_voxels: CT voxels whose value was not a whole number of HU (rounded).
      affine: float64 [4, 4], the file's voxel ``(i, j, k, 1)`` -> RAS mm affine.
      file_shape: the file's ``(n_i, n_j, n_k)``.
      axes: the file axes that became (slice, row, column) (`canonical_geometry`).
      flips: whether each of them was reversed.
    """

    data: np.ndarray
    geometry: Geometry
    reorientation: str = ""
    rounded_voxels: int = 0
    affine: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(4))
    file_shape: tuple[int, int, int] = (0, 0, 0)
    axes: tuple[int, int, int] = (2, 1, 0)
    flips: tuple[bool, bool, bool] = (False, False, False)


def nifti_stem(name: str) -> str | None:
    """The file name without ``.nii`` / ``.nii.gz`` (case-insensitive); None for another."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def to_file_layout(
    volume: np.ndarray, axes: tuple[int, int, int], flips: tuple[bool, bool, bool]
) -> np.ndarray:
    """The inverse of the reading permutation: canonical [Z, H, W] -> the file's [I, J, K].

    Args:
      volume: [Z, H, W] in the canonical layout (e.g. labels predicted on a study).
      axes, flips: `NiftiVolume.axes` / `NiftiVolume.flips` of the file it was read from.

    Returns:
      The same voxels in the file's own order (exact: no voxel resampled).
    """
    index = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
    return np.ascontiguousarray(np.transpose(np.asarray(volume)[index], np.argsort(axes)))


def canonical_geometry(
    affine_ras: np.ndarray, shape: tuple[int, int, int]
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], Geometry, str]:
    """How a file of `shape` with `affine_ras` maps onto the canonical layout.

    Args:
      affine_ras: float [4, 4], voxel ``(i, j, k, 1)`` -> RAS mm.
      shape: the file's ``(n_i, n_j, n_k)``.

    Returns:
      ``(axes, flips, geometry, description)``: ``axes`` are the file axes that become
      (slice, row, column), i.e. the ones along world z, y, x; ``flips`` whether each of
      them is reversed; the canonical `Geometry`; a description ("" for the identity).

    Raises:
      NiftiReadError: a singular affine, or an axis more than ``AXIS_TOLERANCE_DEG`` off
        every world axis, or two axes along the same world axis.
    """
    lps = LPS_FROM_RAS @ np.asarray(affine_ras, np.float64)[:3]
    steps, origin = lps[:, :3], lps[:, 3]
    spacing = np.linalg.norm(steps, axis=0)
    if not np.all(np.isfinite(steps)) or np.any(spacing <= 0):
        raise NiftiReadError(f"the affine has a zero or non-finite voxel step: {steps.tolist()}")
    dirs = steps / spacing
    world_of = np.argmax(np.abs(dirs), axis=0)  # file axis -> world axis
    cos_min = math.cos(math.radians(AXIS_TOLERANCE_DEG))
    if sorted(world_of.tolist()) != [0, 1, 2]:
        raise NiftiReadError(f"two file axes run along one patient axis: {dirs.tolist()}")
    for a in range(3):
        if abs(dirs[world_of[a], a]) < cos_min:
            raise NiftiReadError(
                f"file axis {'ijk'[a]} runs along {np.round(dirs[:, a], 4).tolist()} (LPS), "
                f"more than {AXIS_TOLERANCE_DEG} degree off a patient axis: an oblique volume "
                "would need resampling"
            )
    file_axis = {int(w): a for a, w in enumerate(world_of)}
    axes = (file_axis[2], file_axis[1], file_axis[0])  # slice (z), row (y), column (x)
    flips = tuple(bool(dirs[w, file_axis[w]] < 0) for w in (2, 1, 0))
    # World position of the canonical voxel (0, 0, 0): the file voxel at the reversed
    # axes' far ends.
    start = np.zeros(3)
    for axis, flip in zip(axes, flips, strict=True):
        if flip:
            start[axis] = shape[axis] - 1
    origin_mm = origin + steps @ start
    sign = [-1.0 if f else 1.0 for f in flips]
    z_step = steps[:, axes[0]] * sign[0]
    n_slices = shape[axes[0]]
    geometry = Geometry(
        positions_mm=origin_mm[None, :] + np.arange(n_slices)[:, None] * z_step[None, :],
        col_dir=tuple(dirs[:, axes[2]] * sign[2]),
        row_dir=tuple(dirs[:, axes[1]] * sign[1]),
        pixel_mm=(float(spacing[axes[1]]), float(spacing[axes[2]])),
        slice_thickness_mm=float(spacing[axes[0]]),
    )
    parts = []
    if axes != (2, 1, 0):
        parts.append(f"axes (slice, row, column) <- file ({', '.join('ijk'[a] for a in axes)})")
    reversed_axes = [n for n, f in zip(("slice", "row", "column"), flips, strict=True) if f]
    if reversed_axes:
        parts.append(" and ".join(reversed_axes) + " reversed")
    return axes, flips, geometry, "; ".join(parts)


def _load(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(data with the file's scaling applied, affine) of a 3D NIfTI file."""
    if not path.is_file():
        raise NiftiMissingError(f"{name}: no such file")
    if nifti_stem(path.name) is None:
        raise NiftiReadError(f"{name}: not a NIfTI file name (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise NiftiReadError(f"{name}: not a NIfTI-1/2 image ({type(img).__name__})")
        shape = img.shape
        if len(shape) < 3 or any(n != 1 for n in shape[3:]):
            raise NiftiReadError(f"{name}: expected a 3D volume, got shape {tuple(shape)}")
        if int(img.header["sform_code"]) == 0 and int(img.header["qform_code"]) == 0:
            raise NiftiReadError(
                f"{name}: neither sform nor qform is set (both codes 0), so its orientation "
                "in the patient is unknown; re-export it with its orientation (e.g. dcm2niix)"
            )
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, np.float64)
    except NiftiReadError:
        raise
    except Exception as e:  # nibabel, gzip and zlib raise many types on damaged files
        raise NiftiReadError(
            f"{name}: not a readable NIfTI file ({type(e).__name__}: {e})".strip()
        ) from e
    data = data.reshape(data.shape[:3])
    if min(data.shape) < 1:
        raise NiftiReadError(f"{name}: empty volume {data.shape}")
    return data, affine


def _to_hu(name: str, data: np.ndarray) -> tuple[np.ndarray, int]:
    """int16 HU and the number of voxels rounded (module docstring)."""
    rounded = 0
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise NiftiReadError(f"{name}: {int(np.sum(~np.isfinite(data)))} non-finite voxels")
        whole = np.rint(data)
        rounded = int(np.count_nonzero(whole != data))
        data = whole
    elif not np.issubdtype(data.dtype, np.integer):
        raise NiftiReadError(f"{name}: voxel type {data.dtype} is not a CT intensity")
    lo, hi = float(data.min()), float(data.max())
    info = np.iinfo(np.int16)
    if lo < info.min or hi > info.max:
        raise NiftiReadError(f"{name}: HU range [{lo:g}, {hi:g}] does not fit int16")
    if lo > AIR_MAX_HU:
        raise NiftiReadError(
            f"{name}: no value below {AIR_MAX_HU:g} (range {lo:g} .. {hi:g}): a CT in HU has "
            "air near -1000; these look like stored values or a normalised image, not HU"
        )
    return data.astype(np.int16), rounded


def _to_labels(name: str, data: np.ndarray) -> np.ndarray:
    """uint8 labels; refuses fractional, negative or > 255 values (naming one)."""
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise NiftiReadError(f"{name}: voxel type {data.dtype} is not a label type")
    bad = ~np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else np.zeros(1, bool)
    if bad.any():
        raise NiftiReadError(f"{name}: label mask holds non-finite values")
    if np.issubdtype(data.dtype, np.floating):
        frac = data != np.rint(data)
        if frac.any():
            raise NiftiReadError(
                f"{name}: label {float(data[frac].flat[0]):g} is not a whole number "
                f"({int(frac.sum())} voxels)"
            )
    lo, hi = data.min(), data.max()
    if lo < 0 or hi > 255:
        raise NiftiReadError(
            f"{name}: labels must lie in 0 .. 255 (records store uint8), found "
            f"{float(lo):g} .. {float(hi):g}"
        )
    return data.astype(np.uint8)


def read_nifti_volume(
    path: str | os.PathLike, *, labels: bool = False, name: str | None = None
) -> NiftiVolume:
    """Reads a NIfTI CT volume (HU) or label mask into the canonical layout.

    Args:
      path: a ``.nii`` or ``.nii.gz`` file.
      labels: read an integer label mask (uint8) instead of CT HU (int16).
      name: how error messages name the file; None: the path as given.

    Returns:
      The `NiftiVolume`: ``data`` [Z, H, W] (Z, H, W = the file's extents along world
      z, y, x), its geometry, the permutation applied, the voxels rounded, and the
      file's affine, shape, axes and flips (the way back: `to_file_layout`).

    Raises:
      NiftiMissingError: no such file.
      NiftiReadError: not a NIfTI name, unreadable or damaged file, not 3D, no
        orientation (sform and qform codes 0), oblique axes, or values that are not HU
        (non-finite, beyond int16, no air) or not labels (fractional, < 0, > 255).
    """
    path = Path(path)
    name = str(path) if name is None else name
    data, affine = _load(path, name)
    try:
        axes, flips, geometry, how = canonical_geometry(affine, data.shape)
    except NiftiReadError as e:
        raise NiftiReadError(f"{name}: {e}") from e
    if labels:
        values, rounded = _to_labels(name, data), 0
    else:
        values, rounded = _to_hu(name, data)
    values = np.transpose(values, axes)
    index = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
    return NiftiVolume(
        data=np.ascontiguousarray(values[index]),
        geometry=geometry,
        reorientation=how,
        rounded_voxels=rounded,
        affine=affine,
        file_shape=(int(data.shape[0]), int(data.shape[1]), int(data.shape[2])),
        axes=axes,
        flips=flips,
    )
