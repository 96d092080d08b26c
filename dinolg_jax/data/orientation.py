"""Reorient axial slices stored flipped or with swapped axes into the canonical layout.

Canonical layout (the one every ``CTVolume`` uses, see ``data/volume.py``): a column
step moves +x (towards the patient's left), a row step +y (posterior), slices z
ascending, i.e. ImageOrientationPatient ``(1, 0, 0, 0, 1, 0)``. Scanners and exports
also write the in-plane axes flipped (``-1, 0, 0, 0, -1, 0``: a 180-degree rotation,
e.g. some prone or vendor exports), mirrored (one axis flipped) or swapped (rows along
x). Each of those is an exact permutation of the pixels:

    canonical = flips(transpose(stored))

with ``transpose`` first (when the stored columns run along y) and then the row and/or
column flips. :func:`reorientation_for` finds it from ImageOrientationPatient;
:meth:`Reorientation.apply` / :meth:`Reorientation.invert` move arrays ``[..., H, W]``
between the layouts, :meth:`Reorientation.points` moves calcium-XML ``(x, y)`` pixel
points, and :meth:`Reorientation.geometry` gives the canonical geometry in which every
voxel keeps its world position.

Orientations whose in-plane axes are not within ``tolerance_deg`` of the patient x / y
axes (oblique, tilted) are refused: reorienting them would need resampling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dinolg_jax.data.volume import Geometry

AXIS_TOLERANCE_DEG = 1.0


class OrientationError(ValueError):
    """An ImageOrientationPatient that is not an axis-aligned axial orientation."""


@dataclasses.dataclass(frozen=True)
class Reorientation:
    """The pixel permutation stored -> canonical: transpose, then flip rows / columns.

    Attributes:
      transpose: stored columns run along patient y (rows along x): swap the axes first.
      flip_rows: reverse the row order (after any transpose).
      flip_cols: reverse the column order (after any transpose).
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def describe(self) -> str:
        """Human-readable, e.g. ``"rows and columns flipped"``; ``""`` for the identity."""
        parts = ["axes swapped"] if self.transpose else []
        flips = [n for n, f in (("rows", self.flip_rows), ("columns", self.flip_cols)) if f]
        if flips:
            parts.append(" and ".join(flips) + " flipped")
        return ", ".join(parts)

    def canonical_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the canonical slice for a stored slice of ``shape``."""
        return (shape[1], shape[0]) if self.transpose else (shape[0], shape[1])

    def apply(self, stored: np.ndarray) -> np.ndarray:
        """Stored ``[..., H, W]`` -> canonical ``[..., H', W']`` (a contiguous copy)."""
        out = np.swapaxes(stored, -1, -2) if self.transpose else stored
        if self.flip_rows:
            out = out[..., ::-1, :]
        if self.flip_cols:
            out = out[..., :, ::-1]
        return np.ascontiguousarray(out)

    def invert(self, canonical: np.ndarray) -> np.ndarray:
        """Canonical ``[..., H', W']`` -> stored ``[..., H, W]`` (inverse of :meth:`apply`)."""
        out = canonical
        if self.flip_cols:
            out = out[..., :, ::-1]
        if self.flip_rows:
            out = out[..., ::-1, :]
        if self.transpose:
            out = np.swapaxes(out, -1, -2)
        return np.ascontiguousarray(out)

    def stored_index(
        self, r: np.ndarray, c: np.ndarray, stored_shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stored (row, col) of canonical pixel (r, c); works for float pixel coordinates."""
        h, w = self.canonical_shape(stored_shape)
        r = (h - 1) - np.asarray(r) if self.flip_rows else np.asarray(r)
        c = (w - 1) - np.asarray(c) if self.flip_cols else np.asarray(c)
        return (c, r) if self.transpose else (r, c)

    def points(self, xy: np.ndarray, stored_shape: tuple[int, int]) -> np.ndarray:
        """Stored pixel points ``(x = col, y = row)`` [P, 2] -> canonical ``(x, y)`` [P, 2].

        Pixel centres map onto pixel centres (``x -> W - 1 - x`` for a column flip), so a
        polygon filled in the canonical layout covers the pixels it covered when stored.
        """
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        x, y = xy[:, 0], xy[:, 1]
        if self.transpose:
            x, y = y, x
        h, w = self.canonical_shape(stored_shape)
        if self.flip_cols:
            x = (w - 1) - x
        if self.flip_rows:
            y = (h - 1) - y
        return np.stack([x, y], axis=1)

    def geometry(self, stored: Geometry, stored_shape: tuple[int, int]) -> Geometry:
        """The canonical layout's geometry: every voxel keeps its world position.

        Args:
          stored: the geometry of the stored slices (their IPP, IOP, PixelSpacing).
          stored_shape: (H, W) of a stored slice.
        """
        u, v = np.asarray(stored.col_dir), np.asarray(stored.row_dir)
        row_mm, col_mm = stored.pixel_mm
        if self.transpose:  # canonical columns follow the stored rows, and vice versa
            u, v = v, u
            row_mm, col_mm = col_mm, row_mm
        r0, c0 = self.stored_index(np.asarray(0), np.asarray(0), stored_shape)
        offset = float(c0) * stored.pixel_mm[1] * np.asarray(stored.col_dir) + float(
            r0
        ) * stored.pixel_mm[0] * np.asarray(stored.row_dir)
        return Geometry(
            positions_mm=stored.positions_mm + offset,
            col_dir=tuple(-u if self.flip_cols else u),
            row_dir=tuple(-v if self.flip_rows else v),
            pixel_mm=(row_mm, col_mm),
            slice_thickness_mm=stored.slice_thickness_mm,
            header_thickness_mm=stored.header_thickness_mm,
        )


def _axis(vector: np.ndarray, tolerance_deg: float) -> tuple[int, float] | None:
    """(patient axis 0 = x / 1 = y, sign) that ``vector`` lies along, or None."""
    axis = int(np.argmax(np.abs(vector[:2])))
    cos = abs(float(vector[axis])) / max(float(np.linalg.norm(vector)), 1e-12)
    if cos < np.cos(np.radians(tolerance_deg)):
        return None
    return axis, float(np.sign(vector[axis]))


def reorientation_for(
    orientation: Sequence[float], tolerance_deg: float = AXIS_TOLERANCE_DEG
) -> Reorientation:
    """The permutation that brings slices with this ImageOrientationPatient to canonical.

    Args:
      orientation: ImageOrientationPatient, 6 values (column direction, row direction).
      tolerance_deg: largest angle between an in-plane axis and the patient x / y axis.

    Raises:
      OrientationError: an in-plane axis more than ``tolerance_deg`` from x or y (oblique),
        or both along the same patient axis (degenerate).
    """
    iop = np.asarray(orientation, np.float64).reshape(6)
    u, v = iop[:3], iop[3:]
    au, av = _axis(u, tolerance_deg), _axis(v, tolerance_deg)
    if au is None or av is None:
        raise OrientationError(
            f"ImageOrientationPatient {[round(float(x), 6) for x in iop]} is oblique: its "
            f"in-plane axes are not within {tolerance_deg} deg of the patient x and y axes "
            "(reorienting it would need resampling)"
        )
    if au[0] == av[0]:
        raise OrientationError(
            f"ImageOrientationPatient {[round(float(x), 6) for x in iop]} is degenerate: "
            "both in-plane axes lie along the same patient axis"
        )
    if au[0] == 0:  # columns along x, rows along y
        return Reorientation(False, flip_rows=av[1] < 0, flip_cols=au[1] < 0)
    return Reorientation(True, flip_rows=au[1] < 0, flip_cols=av[1] < 0)
