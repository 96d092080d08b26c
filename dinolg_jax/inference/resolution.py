"""In-plane resampling between a study's grid and the grid a model learnt at.

A U-Net finds lesions at the pixel scale it was trained at, and a probe reads features
of slices at the scale it was trained at. So a study whose pixels are another size (a
real 512 px series at 0.4 mm against a model trained on 64 px phantom slices at about
3 mm) is resampled in-plane to the model's spacing, centre-cropped or padded to the
model's slice size, gated and segmented there; the segmenter's class probabilities are
resampled back onto the study's own grid, and their argmax is the label volume that is
scored on the original HU at the original spacing (the lesion rule stays
``labels & HU >= threshold``, so the lesion outline is the study's own, not the coarse
model grid's). Slices are never resampled along z.

:class:`ModelGrid` is what a model learnt at: ``pixel_mm`` (the median training spacing,
the spacing a study is resampled to), ``shape`` and the range of spacings it saw. A study
the model could have seen in training (within ``SPACING_TOLERANCE`` of that range, and of
its slice size for a segmenter) is scored as it is, exactly as before this module
existed; any other is mapped by an :class:`InPlaneMap`.

Interpolation (OpenCV ``cv2.resize``, whose pixel-centre convention makes the way there
and the way back the same affine map):

* HU to the model grid: ``INTER_AREA`` when shrinking (each model pixel is the mean of the
  study pixels it covers: what a coarser reconstruction of the same scan shows, without
  the aliasing that point sampling would add to noise and small bright lesions);
  ``INTER_LINEAR`` when enlarging (area interpolation degenerates to nearest-neighbour
  there). Values are rounded back to int16 HU, as the training records are.
* Probabilities back to the study: ``INTER_LINEAR`` when enlarging (a smooth,
  partition-of-unity interpolation: the probabilities still sum to one and the label
  boundary falls between coarse pixel centres instead of on a staircase), ``INTER_AREA``
  when shrinking. Per class channel (OpenCV's area resize takes at most 4 channels).
* Outside the model's view (a study cropped to the model's field) the probabilities are
  background; padding outside the study's field is air (``PAD_HU``).

Because the resized size is rounded to whole pixels, the model sees a spacing within
half a pixel in ``shape`` of its own (under 1 % at 64 px).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

SPACING_TOLERANCE = 0.10  # relative: a study this close to the trained spacings is as-is
PAD_HU = -1024  # air, outside the study's field of view


@dataclasses.dataclass(frozen=True)
class ModelGrid:
    """The in-plane grid a model learnt at.

    Attributes:
      pixel_mm: (row, col) spacing, mm, that studies are resampled to (the median
        spacing of the training slices as the model saw them).
      shape: (H, W) pixels of the slices the model sees.
      range_mm: ((row min, row max), (col min, col max)) spacings, mm, of the training
        slices as the model saw them; ``pixel_mm`` alone when only it is known.
      resizes: the model's own preparation resizes a whole slice to ``shape`` (the gate:
        its features were extracted at a fixed size), so a study of another size whose
        spacing after that resize is in range is scored as it is; False (a segmenter)
        also requires the slice size to be ``shape``.
      origin: where these numbers come from (for messages).
    """

    pixel_mm: tuple[float, float]
    shape: tuple[int, int]
    range_mm: tuple[tuple[float, float], tuple[float, float]] | None = None
    resizes: bool = False
    origin: str = ""

    def __post_init__(self) -> None:
        pixel = tuple(float(v) for v in self.pixel_mm)
        shape = tuple(int(v) for v in self.shape)
        if len(pixel) != 2 or min(pixel) <= 0:
            raise ValueError(f"model pixel spacing must be two positive mm, got {self.pixel_mm}")
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"model slice shape must be two positive sizes, got {self.shape}")
        rng = self.range_mm or ((pixel[0], pixel[0]), (pixel[1], pixel[1]))
        rng = tuple((float(lo), float(hi)) for lo, hi in rng)
        object.__setattr__(self, "pixel_mm", pixel)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "range_mm", rng)

    def seen_spacing(self, shape: Sequence[int], pixel_mm: Sequence[float]) -> tuple[float, float]:
        """(row, col) mm the model would see for slices of ``shape`` at ``pixel_mm``
        prepared as in training (resized whole to ``self.shape`` when ``resizes``)."""
        if not self.resizes:
            return float(pixel_mm[0]), float(pixel_mm[1])
        return (
            float(pixel_mm[0]) * int(shape[0]) / self.shape[0],
            float(pixel_mm[1]) * int(shape[1]) / self.shape[1],
        )

    def as_trained(self, shape: Sequence[int], pixel_mm: Sequence[float]) -> bool:
        """True when slices of ``shape`` (H, W) at ``pixel_mm`` (row, col) are like the
        training slices (spacing within ``SPACING_TOLERANCE`` of the trained range, and
        the trained size unless the model resizes): scored as they are, not resampled."""
        if not self.resizes and tuple(int(v) for v in shape) != self.shape:
            return False
        seen = self.seen_spacing(shape, pixel_mm)
        tol = SPACING_TOLERANCE
        return all(
            lo * (1 - tol) <= s <= hi * (1 + tol)
            for s, (lo, hi) in zip(seen, self.range_mm, strict=True)
        )

    def mapping(self, shape: Sequence[int], pixel_mm: Sequence[float]) -> InPlaneMap | None:
        """The map of slices ``shape`` at ``pixel_mm`` onto this grid, or None when they
        are scored as they are (:meth:`as_trained`)."""
        if self.as_trained(shape, pixel_mm):
            return None
        return InPlaneMap.between(shape, pixel_mm, self)

    def describe(self) -> str:
        """One line: spacing, size and range, for logs and messages."""
        (r0, r1), (c0, c1) = self.range_mm
        return (
            f"{self.pixel_mm[0]:.3g} x {self.pixel_mm[1]:.3g} mm pixels, "
            f"{self.shape[0]} x {self.shape[1]} px (trained on {r0:.3g}-{r1:.3g} x "
            f"{c0:.3g}-{c1:.3g} mm)"
        )


def _offset(resized: int, target: int) -> int:
    """Index in the resized axis of the target's pixel 0 (negative: the target pads)."""
    return (resized - target) // 2


def _overlap(offset: int, resized: int, target: int) -> tuple[slice, slice]:
    """(slice of the resized axis, slice of the target axis) that coincide."""
    lo = max(0, offset)
    hi = min(resized, offset + target)
    return slice(lo, hi), slice(lo - offset, hi - offset)


@dataclasses.dataclass(frozen=True)
class InPlaneMap:
    """One study's in-plane map onto a model grid and back (module docstring).

    Attributes:
      study_shape: (H, W) of the study's slices.
      resized_shape: (h', w'): the study's slices at the model's spacing.
      model_shape: (h, w): the model's slices (centre crop / pad of the resized ones).
      shrink: the study's pixels are finer on both axes (area interpolation on the way
        in); otherwise linear.
    """

    study_shape: tuple[int, int]
    resized_shape: tuple[int, int]
    model_shape: tuple[int, int]

    @classmethod
    def between(
        cls, shape: Sequence[int], pixel_mm: Sequence[float], grid: ModelGrid
    ) -> InPlaneMap:
        """The map of slices ``shape`` (H, W) at ``pixel_mm`` (row, col) onto ``grid``."""
        h, w = int(shape[0]), int(shape[1])
        if min(float(v) for v in pixel_mm) <= 0:
            raise ValueError(f"pixel spacing must be positive, got {tuple(pixel_mm)}")
        rh = max(1, round(h * float(pixel_mm[0]) / grid.pixel_mm[0]))
        rw = max(1, round(w * float(pixel_mm[1]) / grid.pixel_mm[1]))
        return cls((h, w), (rh, rw), grid.shape)

    @property
    def shrink(self) -> bool:
        return self.resized_shape[0] <= self.study_shape[0] and (
            self.resized_shape[1] <= self.study_shape[1]
        )

    @property
    def _slices(self) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        (rh, rw), (h, w) = self.resized_shape, self.model_shape
        rows = _overlap(_offset(rh, h), rh, h)
        cols = _overlap(_offset(rw, w), rw, w)
        return rows, cols

    def to_model(self, hu: np.ndarray) -> np.ndarray:
        """int16 [N, h, w]: HU slices ``hu`` [N, H, W] on the model grid."""
        hu = np.asarray(hu)
        if hu.ndim != 3 or tuple(hu.shape[1:]) != self.study_shape:
            raise ValueError(f"expected slices [N, {self.study_shape}], got {hu.shape}")
        (rh, rw), (h, w) = self.resized_shape, self.model_shape
        interp = cv2.INTER_AREA if self.shrink else cv2.INTER_LINEAR
        (r_src, r_dst), (c_src, c_dst) = self._slices
        out = np.full((hu.shape[0], h, w), PAD_HU, np.int16)
        for i, im in enumerate(hu):
            resized = cv2.resize(im.astype(np.float32), (rw, rh), interpolation=interp)
            resized = np.clip(np.rint(resized), -32768, 32767).astype(np.int16)
            out[i, r_dst, c_dst] = resized[r_src, c_src]
        return out

    def to_study(self, probs: np.ndarray) -> np.ndarray:
        """float32 [N, H, W, K]: class probabilities ``probs`` [N, h, w, K] (channel 0 the
        background) on the study's grid; background outside the model's view."""
        probs = np.asarray(probs, np.float32)
        if probs.ndim != 4 or tuple(probs.shape[1:3]) != self.model_shape:
            raise ValueError(
                f"expected probabilities [N, {self.model_shape}, K], got {probs.shape}"
            )
        (rh, rw), (h, w) = self.resized_shape, self.study_shape
        n, k = probs.shape[0], probs.shape[3]
        interp = cv2.INTER_LINEAR if self.shrink else cv2.INTER_AREA
        (r_src, r_dst), (c_src, c_dst) = self._slices
        out = np.empty((n, h, w, k), np.float32)
        canvas = np.zeros((rh, rw), np.float32)
        for i in range(n):
            for c in range(k):
                canvas.fill(1.0 if c == 0 else 0.0)
                canvas[r_src, c_src] = probs[i, r_dst, c_dst, c]
                out[i, ..., c] = cv2.resize(canvas, (w, h), interpolation=interp)
        return out

    def labels_to_study(self, probs: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W]: argmax of :meth:`to_study` (one slice at a time)."""
        probs = np.asarray(probs, np.float32)
        out = np.empty((probs.shape[0], *self.study_shape), np.uint8)
        for i in range(probs.shape[0]):
            out[i] = np.argmax(self.to_study(probs[i : i + 1])[0], axis=-1)
        return out
