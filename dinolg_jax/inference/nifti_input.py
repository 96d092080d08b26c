"""A NIfTI CT volume in HU (``.nii`` / ``.nii.gz``) -> a canonical :class:`CTVolume`.

The reverse of :mod:`dinolg_jax.inference.nifti`: a volume someone exported (dcm2niix,
3D Slicer, a research archive) is scored like a DICOM series.

* Orientation and spacing come from the file's affine (the sform when its code is set,
  else the qform; a file with neither has no orientation and is refused). The affine is
  RAS+ (NIfTI); ``LPS = diag(-1, -1, 1) @ RAS`` gives DICOM's patient coordinates.
* The voxel axes are permuted and flipped (exactly, no resampling) into the canonical
  axial layout of ``data/volume.py``: a column step towards the patient's left, a row
  step posterior, slices z ascending. Axes more than ``AXIS_TOLERANCE_DEG`` off the
  patient axes (oblique or tilted volumes) are refused, as ``data/orientation.py``
  refuses such DICOM series: reorienting them would need resampling.
* Values are HU after the header's scaling (``scl_slope`` / ``scl_inter``), rounded to
  int16. A volume with no value below -200 has no air in it: it is not in HU (raw stored
  values, or a normalised image) and is refused rather than scored wrongly.
* :class:`NiftiSource` (``CTVolume.source``) remembers the file's own voxel order and
  affine, so that :func:`dinolg_jax.inference.nifti.write_study` puts the outputs on the
  input's grid (same dimensions and affine: they overlay it voxel for voxel).

Nothing in a NIfTI header identifies a person by design, but ``descrip`` and
``aux_file`` are free text: neither is read.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from dinolg_jax.data.volume import CTVolume, Geometry

AXIS_TOLERANCE_DEG = 1.0
CANONICAL_AXCODES = ("L", "P", "S")  # i = column -> left, j = row -> posterior, k -> superior
AIR_MAX_HU = -200.0  # a CT in HU has air (about -1000 HU) somewhere below this
HU_RANGE = (-32768.0, 32767.0)
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SUFFIXES = (".nii", ".nii.gz")


class NiftiInputError(ValueError):
    """A file that is not a 3D NIfTI CT volume in HU with an axis-aligned orientation."""


@dataclasses.dataclass(frozen=True)
class NiftiSource:
    """Where a volume read from NIfTI came from (``CTVolume.source``).

    Attributes:
      name: the file's name (no folder).
      affine: float64 [4, 4], the file's voxel -> RAS affine.
      shape: the file's (I, J, K) dimensions.
      to_canonical: nibabel orientation transform [3, 2] from the file's voxel axes to
        the canonical ones (``nib.orientations.apply_orientation``).
      to_file: its inverse.
    """

    name: str
    affine: np.ndarray
    shape: tuple[int, int, int]
    to_canonical: np.ndarray
    to_file: np.ndarray

    def to_file_layout(self, volume: np.ndarray) -> np.ndarray:
        """[Z, H, W] canonical -> the file's [I, J, K] voxel order (exact permutation)."""
        canonical_ijk = np.asarray(volume).T  # (W, H, Z) = canonical (i, j, k)
        out = nib.orientations.apply_orientation(canonical_ijk, self.to_file)
        if out.shape != self.shape:
            raise ValueError(f"volume {volume.shape} does not map to the file's {self.shape}")
        return np.ascontiguousarray(out)


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True when the name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(SUFFIXES)


def study_id_of(path: str | os.PathLike) -> str:
    """The file name without ``.nii`` / ``.nii.gz``: the study's id."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _affine(img: nib.Nifti1Image, name: str) -> np.ndarray:
    header = img.header
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    if sform_code > 0:
        return np.asarray(img.get_sform(), np.float64)
    if qform_code > 0:
        return np.asarray(img.get_qform(), np.float64)
    raise NiftiInputError(
        f"{name}: neither sform nor qform is set (both codes 0), so its orientation in the "
        "patient is unknown; re-export it with its orientation (e.g. dcm2niix)"
    )


def _check_axis_aligned(lps: np.ndarray, name: str) -> None:
    """Each voxel axis within ``AXIS_TOLERANCE_DEG`` of one patient axis, all different."""
    cos_tol = np.cos(np.radians(AXIS_TOLERANCE_DEG))
    used = set()
    for axis in range(3):
        v = lps[:3, axis]
        norm = float(np.linalg.norm(v))
        if norm <= 0:
            raise NiftiInputError(f"{name}: voxel axis {axis} has zero length in the affine")
        best = int(np.argmax(np.abs(v)))
        if abs(v[best]) / norm < cos_tol or best in used:
            raise NiftiInputError(
                f"{name}: voxel axis {axis} runs along {np.round(v / norm, 4).tolist()} "
                f"(LPS), more than {AXIS_TOLERANCE_DEG:g} degrees off the patient axes: an "
                "oblique or tilted volume needs resampling to axial first"
            )
        used.add(best)


def read_nifti_ct(path: str | os.PathLike, *, study_id: str | None = None) -> CTVolume:
    """Reads a NIfTI CT volume in HU as a canonical :class:`CTVolume`.

    Args:
      path: a ``.nii`` or ``.nii.gz`` file, 3D (or 4D with one volume).
      study_id: the volume's id; None = the file name without its suffix.

    Returns:
      ``hu`` int16 [Z, H, W] canonical (see the module docstring), ``geometry`` from the
      affine (``slice_thickness_mm`` = the slice step, ``header_thickness_mm`` None),
      ``kind`` "nifti", ``kvp`` and ``mass_factor`` None (NIfTI does not carry them),
      ``source`` a :class:`NiftiSource`.

    Raises:
      FileNotFoundError: no such file.
      NiftiInputError: not a readable 3D NIfTI, no orientation, oblique axes, values
        that are not finite, outside int16 or not HU.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not is_nifti_path(path):
        raise NiftiInputError(f"{name}: not a NIfTI file name (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for damaged files
        raise NiftiInputError(f"{name}: not a readable NIfTI file ({e})") from e
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise NiftiInputError(f"{name}: not a NIfTI-1/2 image ({type(img).__name__})")
    shape = tuple(int(d) for d in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 1:
        raise NiftiInputError(f"{name}: expected a 3D volume, got dimensions {img.shape}")
    affine = _affine(img, name)
    lps = _RAS_TO_LPS @ affine
    _check_axis_aligned(lps, name)
    data = np.asarray(img.get_fdata(dtype=np.float64)).reshape(shape)
    if not np.all(np.isfinite(data)):
        raise NiftiInputError(f"{name}: holds NaN or infinite values")
    lo, hi = float(data.min()), float(data.max())
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise NiftiInputError(f"{name}: values {lo:g} .. {hi:g} do not fit int16 HU")
    if lo > AIR_MAX_HU:
        raise NiftiInputError(
            f"{name}: no value below {AIR_MAX_HU:g} (range {lo:g} .. {hi:g}): a CT in HU has "
            "air near -1000; these look like stored values or a normalised image, not HU"
        )
    ornt = nib.orientations.io_orientation(affine)
    canonical_ornt = nib.orientations.axcodes2ornt(CANONICAL_AXCODES)
    to_canonical = nib.orientations.ornt_transform(ornt, canonical_ornt)
    canonical = nib.orientations.apply_orientation(data, to_canonical)  # (W, H, Z)
    hu = np.ascontiguousarray(np.rint(canonical).astype(np.int16).T)  # [Z, H, W]
    lps_canonical = lps @ nib.orientations.inv_ornt_aff(to_canonical, shape)
    col, row, step = (lps_canonical[:3, a] for a in range(3))
    pixel = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
    z = int(hu.shape[0])
    positions = lps_canonical[:3, 3][None, :] + np.arange(z)[:, None] * step[None, :]
    geometry = Geometry(
        positions_mm=positions,
        col_dir=tuple(col / pixel[1]),
        row_dir=tuple(row / pixel[0]),
        pixel_mm=pixel,
        slice_thickness_mm=float(np.linalg.norm(step)),
        header_thickness_mm=None,
    )
    to_file = nib.orientations.ornt_transform(canonical_ornt, ornt)
    source = NiftiSource(name, affine, shape, to_canonical, to_file)
    return CTVolume(
        study_id if study_id is not None else study_id_of(path),
        hu,
        geometry,
        kind="nifti",
        source=source,
    )
