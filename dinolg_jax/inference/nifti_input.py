"""A NIfTI CT volume in HU (``.nii`` / ``.nii.gz``) -> a canonical :class:`CTVolume`.

The reverse of :mod:`dinolg_jax.inference.nifti`: a volume someone exported (dcm2niix,
3D Slicer, a research archive) is scored like a DICOM series.

The reading itself is ``data.nifti_reader`` (the project's one NIfTI reader, which
conversion uses too): orientation and spacing from the file's affine (sform, else
qform; neither: refused), an exact permutation into the canonical axial layout of
``data/volume.py`` (no resampling; oblique or tilted volumes more than
``AXIS_TOLERANCE_DEG`` off the patient axes refused, as ``data/orientation.py`` refuses
such DICOM series), HU after the header's scaling rounded to int16, and a volume with no
value below ``AIR_MAX_HU`` refused as not HU. This module adds what scoring needs:

* the :class:`CTVolume` (``kind`` "nifti", the file name without its suffix as id);
* :class:`NiftiSource` (``CTVolume.source``): the file's affine, shape and the reading
  permutation, so that :func:`dinolg_jax.inference.nifti.write_study` puts the outputs
  on the input's grid (same dimensions and affine: they overlay it voxel for voxel).

Errors name the file by its name only (no folder). Nothing in a NIfTI header
identifies a person by design, but ``descrip`` and ``aux_file`` are free text: neither
is read.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from dinolg_jax.data import nifti_reader
from dinolg_jax.data.volume import CTVolume

AXIS_TOLERANCE_DEG = nifti_reader.AXIS_TOLERANCE_DEG
AIR_MAX_HU = nifti_reader.AIR_MAX_HU
SUFFIXES = nifti_reader.NIFTI_SUFFIXES

# One error type for both readers: a refused file is a NiftiReadError wherever it is read.
NiftiInputError = nifti_reader.NiftiReadError


@dataclasses.dataclass(frozen=True)
class NiftiSource:
    """Where a volume read from NIfTI came from (``CTVolume.source``).

    Attributes:
      name: the file's name (no folder).
      affine: float64 [4, 4], the file's voxel -> RAS affine.
      shape: the file's (I, J, K) dimensions.
      axes: the file axes that became the canonical (slice, row, column) axes.
      flips: whether each of them was reversed.
    """

    name: str
    affine: np.ndarray
    shape: tuple[int, int, int]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def to_file_layout(self, volume: np.ndarray) -> np.ndarray:
        """[Z, H, W] canonical -> the file's [I, J, K] voxel order (exact permutation)."""
        out = nifti_reader.to_file_layout(volume, self.axes, self.flips)
        if out.shape != self.shape:
            raise ValueError(f"volume {np.shape(volume)} does not map to the file's {self.shape}")
        return out


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True when the name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return nifti_reader.nifti_stem(Path(path).name) is not None


def study_id_of(path: str | os.PathLike) -> str:
    """The file name without ``.nii`` / ``.nii.gz``: the study's id."""
    name = Path(path).name
    stem = nifti_reader.nifti_stem(name)
    return name if stem is None else stem


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
      FileNotFoundError: no such file (``nifti_reader.NiftiMissingError``).
      NiftiInputError: every refusal of ``data.nifti_reader.read_nifti_volume``: not a
        NIfTI name, not a readable 3D NIfTI, no orientation, oblique axes, values that
        are not finite, outside int16 or not HU.
    """
    path = Path(path)
    vol = nifti_reader.read_nifti_volume(path, name=path.name)
    source = NiftiSource(path.name, vol.affine, vol.file_shape, vol.axes, vol.flips)
    return CTVolume(
        study_id if study_id is not None else study_id_of(path),
        vol.data,
        vol.geometry,
        kind="nifti",
        source=source,
    )
