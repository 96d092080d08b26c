"""The one in-memory type for a CT study: voxels, where they are in the patient, calibration.

A :class:`CTVolume` is what the DICOM reader returns, what ``data/coca.py`` adds calcium
labels to, what the converter turns into records and what inference scores and writes
out (NIfTI, DICOM SEG, overlays). Its :class:`Geometry` places every voxel in DICOM's
patient coordinate system (LPS+: +x towards the patient's left, +y posterior, +z
superior; millimetres).

Layout and conventions:

* ``hu[k, r, c]``: slice ``k`` (z ascending, 0 the most inferior), row ``r``, column
  ``c``. After ``data/dicom.py`` every volume is in the canonical axial layout: a column
  step moves +x (towards the patient's left), a row step +y (posterior), a slice step +z
  (``data/orientation.py`` reorients flipped or swapped series into it).
* World position of voxel centre ``(k, r, c)``::

      positions_mm[k] + c * pixel_mm[1] * col_dir + r * pixel_mm[0] * row_dir

  ``positions_mm[k]`` is ImagePositionPatient of slice ``k`` (the centre of its voxel
  ``(0, 0)``), ``col_dir`` / ``row_dir`` are ImageOrientationPatient's two direction
  cosines (DICOM's "row" and "column" direction: the direction of increasing column,
  and of increasing row, index), ``pixel_mm`` is PixelSpacing (row spacing, column
  spacing). Positions are kept per slice, so uneven z spacing is represented exactly.
* ``kvp`` is None when the header has no KVP (one convention everywhere; records store
  0.0 on the wire, see ``data/records.py``).

Nothing here identifies a person: ``study_id`` is a dataset-local id; ``source`` (reader
provenance: file paths, SOP instance references for DICOM SEG) is never serialised into
records or reports.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# Steps differing from the mean by more than this are "uneven" for an affine.
EVEN_Z_TOLERANCE_MM = 0.01


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Voxel -> patient (LPS, mm) geometry of a [Z, H, W] volume (module docstring).

    Attributes:
      positions_mm: float64 [Z, 3], ImagePositionPatient of each slice, z ascending.
      col_dir: unit LPS direction of increasing column index (ImageOrientationPatient[:3]).
      row_dir: unit LPS direction of increasing row index (ImageOrientationPatient[3:]).
      pixel_mm: (row spacing, column spacing), mm (DICOM PixelSpacing order).
      slice_thickness_mm: median z-step between slices, mm (the header's SliceThickness
        for a single slice); Agatston's thickness normalisation uses it.
      header_thickness_mm: SliceThickness as written in the header, or None.
    """

    positions_mm: np.ndarray
    col_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    row_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    pixel_mm: tuple[float, float] = (1.0, 1.0)
    slice_thickness_mm: float = 1.0
    header_thickness_mm: float | None = None

    def __post_init__(self) -> None:
        pos = np.asarray(self.positions_mm, np.float64).reshape(-1, 3)
        object.__setattr__(self, "positions_mm", pos)
        object.__setattr__(self, "col_dir", tuple(float(v) for v in self.col_dir))
        object.__setattr__(self, "row_dir", tuple(float(v) for v in self.row_dir))
        object.__setattr__(self, "pixel_mm", (float(self.pixel_mm[0]), float(self.pixel_mm[1])))
        object.__setattr__(self, "slice_thickness_mm", float(self.slice_thickness_mm))
        if pos.shape[0] == 0:
            raise ValueError("a geometry needs at least one slice position")
        if min(self.pixel_mm) <= 0:
            raise ValueError(f"pixel spacing must be positive, got {self.pixel_mm}")

    @classmethod
    def axial(
        cls,
        pixel_mm: tuple[float, float],
        z_mm: np.ndarray,
        slice_thickness_mm: float,
        *,
        origin_xy_mm: tuple[float, float] = (0.0, 0.0),
        header_thickness_mm: float | None = None,
    ) -> Geometry:
        """A canonical axial geometry: slices at ``z_mm`` [Z], all at ``origin_xy_mm``."""
        z = np.asarray(z_mm, np.float64).reshape(-1)
        pos = np.stack([np.full_like(z, origin_xy_mm[0]), np.full_like(z, origin_xy_mm[1]), z], 1)
        return cls(
            positions_mm=pos,
            pixel_mm=pixel_mm,
            slice_thickness_mm=slice_thickness_mm,
            header_thickness_mm=header_thickness_mm,
        )

    @property
    def num_slices(self) -> int:
        return int(self.positions_mm.shape[0])

    @property
    def z_mm(self) -> np.ndarray:
        """float64 [Z]: z of each slice (ImagePositionPatient z), ascending."""
        return self.positions_mm[:, 2]

    @property
    def origin_mm(self) -> np.ndarray:
        """float64 [3]: LPS centre of voxel (0, 0, 0)."""
        return self.positions_mm[0].copy()

    @property
    def orientation(self) -> tuple[float, ...]:
        """ImageOrientationPatient: ``col_dir + row_dir`` (6 values)."""
        return (*self.col_dir, *self.row_dir)

    @property
    def normal(self) -> np.ndarray:
        """float64 [3]: unit ``col_dir x row_dir`` (DICOM's slice normal)."""
        n = np.cross(self.col_dir, self.row_dir)
        return n / np.linalg.norm(n)

    def slice_step_mm(self, *, allow_uneven: bool = False) -> np.ndarray:
        """float64 [3]: LPS displacement from one slice to the next (mean over the series).

        A single slice steps ``slice_thickness_mm`` along +z (or along the normal
        oriented towards +z).

        Raises:
          ValueError: a step differs from the mean by more than ``EVEN_Z_TOLERANCE_MM``
            and not ``allow_uneven``.
        """
        pos = self.positions_mm
        if pos.shape[0] == 1:
            n = self.normal
            return n * self.slice_thickness_mm * (1.0 if n[2] >= 0 else -1.0)
        step = (pos[-1] - pos[0]) / (pos.shape[0] - 1)
        worst = float(np.max(np.linalg.norm(np.diff(pos, axis=0) - step, axis=1)))
        if worst > EVEN_Z_TOLERANCE_MM and not allow_uneven:
            raise ValueError(
                f"slices are not evenly spaced (a step differs from the mean "
                f"{np.linalg.norm(step):.4f} mm by {worst:.4f} mm)"
            )
        return step

    def affine_lps(self, *, allow_uneven: bool = False) -> np.ndarray:
        """float64 [4, 4]: voxel ``(i = column, j = row, k = slice, 1)`` -> LPS mm.

        Exact for evenly spaced slices; with ``allow_uneven`` the mean slice step is used
        (then only the first and last slices sit exactly where the header says).
        """
        out = np.eye(4)
        out[:3, 0] = np.asarray(self.col_dir) * self.pixel_mm[1]
        out[:3, 1] = np.asarray(self.row_dir) * self.pixel_mm[0]
        out[:3, 2] = self.slice_step_mm(allow_uneven=allow_uneven)
        out[:3, 3] = self.positions_mm[0]
        return out

    def world_mm(self, k: Any, r: Any, c: Any) -> np.ndarray:
        """float64 [..., 3]: LPS centre of voxels ``(k, r, c)`` (broadcast integer arrays)."""
        k, r, c = np.broadcast_arrays(np.asarray(k), np.asarray(r, np.float64), np.asarray(c))
        pos = self.positions_mm[k.astype(np.intp)]
        return (
            pos
            + c[..., None] * self.pixel_mm[1] * np.asarray(self.col_dir)
            + r[..., None] * self.pixel_mm[0] * np.asarray(self.row_dir)
        )


@dataclasses.dataclass
class CTVolume:
    """One CT study in memory (module docstring).

    Attributes:
      study_id: dataset-local de-identified id (``gated-0007``, a folder name, ...).
      hu: int16 [Z, H, W] Hounsfield units, canonical axial layout, z ascending.
      geometry: where each voxel is (:class:`Geometry`).
      kvp: tube voltage (KVP), None when unknown.
      mass_factor: (0018,9352) CalciumScoringMassFactorDevice, or None.
      labels: uint8 [Z, H, W] (0 bg, 1 RCA, 2 LAD, 3 LCA, 4 LCX), or None (no labels, or
        labels left out; see ``report``).
      kind: ``"gated"``, ``"nongated"`` (COCA) or ``"dicom"`` (any other folder).
      lossy_compression: some slice was decoded from a lossy transfer syntax, or says
        (LossyImageCompression "01") that lossy compression was applied before: its HU
        are not the scanner's.
      report: what loading did (``coca.StudyReport`` for COCA studies), or None.
      source: reader provenance (``data.dicom.SeriesSource``: files, dropped files, the
        orientation applied, SOP references for DICOM SEG); None for volumes rebuilt
        from records.
    """

    study_id: str
    hu: np.ndarray
    geometry: Geometry
    kvp: float | None = None
    mass_factor: tuple[float, ...] | None = None
    labels: np.ndarray | None = None
    kind: str = "dicom"
    lossy_compression: bool = False
    report: Any = None
    source: Any = None

    def __post_init__(self) -> None:
        if self.hu.ndim != 3 or self.hu.shape[0] != self.geometry.num_slices:
            raise ValueError(
                f"hu {self.hu.shape} does not match a geometry of {self.geometry.num_slices} slices"
            )
        if self.labels is not None and self.labels.shape != self.hu.shape:
            raise ValueError(f"labels {self.labels.shape} differ from hu {self.hu.shape}")

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """(row, col) pixel spacing, mm."""
        return self.geometry.pixel_mm

    @property
    def z_mm(self) -> np.ndarray:
        """float64 [Z] slice z positions, ascending, mm."""
        return self.geometry.z_mm

    @property
    def slice_thickness_mm(self) -> float:
        """The z-step Agatston normalises with, mm."""
        return self.geometry.slice_thickness_mm
