"""Augmentations for single-channel CT slices: intensity kernels and the Grain ops.

Every random choice comes from the `np.random.Generator` the caller passes (Grain hands
one to each `RandomMap` call, derived from the pipeline seed and the element index), so
results do not depend on the worker count and never touch the global numpy RNG.

Conventions:
  * Intensities: `normalize_hu` maps a Hounsfield window ``[lo, hi]`` linearly onto
    ``[-1, 1]`` (values outside the window are clipped first). Brightness deltas and
    noise standard deviations are in these normalised units (1 unit = (hi - lo) / 2 HU).
  * Boxes, resizing and blur: see `resample` (OpenCV; `resized_crops`, `gaussian_blur`
    are re-exported here).
  * Noise: additive Gaussian, read at a random offset from a fixed table of standard
    normal draws (`noise_table`). Drawing fresh normals costs ~17 ns per value with
    Grain's Philox generator (a quarter of a million values per multi-crop sample);
    reading a window of a 1 Mi-entry table costs one add.

No solarisation and no colour jitter: they do not suit HU images (the paper's Table 1).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from dinolg_jax.data.resample import gaussian_blur as gaussian_blur  # re-exported
from dinolg_jax.data.resample import resized_crops as resized_crops  # re-exported

DEFAULT_HU_WINDOW = (-1000.0, 1000.0)
NOISE_TABLE_SIZE = 1 << 20  # standard normal values in the noise table (4 MiB float32)
_NOISE_TABLE_SEED = 0x5EED_CA1C


# ----------------------------------------------------------------------------- kernels


def _window(window: Sequence[float]) -> tuple[float, float]:
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"HU window must have lo < hi, got {window}")
    return lo, hi


def hu_affine(window: Sequence[float] = DEFAULT_HU_WINDOW) -> tuple[float, float]:
    """``(scale, offset)`` with ``normalize_hu(hu) == clip(hu, lo, hi) * scale + offset``."""
    lo, hi = _window(window)
    return 2.0 / (hi - lo), -2.0 * lo / (hi - lo) - 1.0


def normalize_hu(
    image_hu: np.ndarray,
    window: Sequence[float] = DEFAULT_HU_WINDOW,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Maps HU to ``[-1, 1]``: ``2 * (clip(hu, lo, hi) - lo) / (hi - lo) - 1``.

    Args:
      image_hu: any shape, integer or float, Hounsfield units.
      window: ``(lo, hi)`` in HU, ``lo < hi``.
      out: optional float32 array of the same shape to write into.

    Returns:
      float32 array of the same shape (`out` when given, else a new array).
    """
    lo, hi = _window(window)
    out = clip_hu(image_hu, window, out)
    out -= lo
    out *= 2.0 / (hi - lo)
    out -= 1.0
    return out


def clip_hu(
    image_hu: np.ndarray,
    window: Sequence[float] = DEFAULT_HU_WINDOW,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``clip(hu, lo, hi)`` as float32, HU (the first step of `normalize_hu`).

    Bilinear resampling and blurring commute with the affine rest of the normalisation
    (their weights sum to 1), so crops can be cut from this and scaled afterwards.
    Arguments and result as `normalize_hu` (same shape, float32, `out` when given).
    """
    lo, hi = _window(window)
    image_hu = np.asarray(image_hu)
    if out is None:
        out = np.empty(image_hu.shape, np.float32)
    if image_hu.dtype == np.int16 and lo.is_integer() and hi.is_integer() and lo >= -(2**15):
        # One pass: an int16 clip cast to float32 (exact: the bounds are integers).
        np.clip(image_hu, int(lo), int(min(hi, 2**15 - 1)), out=out, casting="unsafe")
    else:
        np.copyto(out, image_hu, casting="unsafe")
        np.clip(out, np.float32(lo), np.float32(hi), out=out)
    return out


@functools.cache
def noise_table() -> np.ndarray:
    """A fixed float32 table of `NOISE_TABLE_SIZE` standard normal draws (read-only).

    Built once per process from a constant seed with its own generator, so every process
    holds the same table; `add_noise` picks windows of it with the caller's generator.
    """
    gen = np.random.Generator(np.random.PCG64(_NOISE_TABLE_SEED))
    table = gen.standard_normal(NOISE_TABLE_SIZE, dtype=np.float32)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=4)
def _scaled_noise_table(std: float) -> np.ndarray:
    """``noise_table() * float32(std)`` (read-only); augmentations reuse a few stds."""
    table = noise_table() * np.float32(std)
    table.flags.writeable = False
    return table


def noise_offsets(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """`n` offsets of `count`-value windows of `noise_table`, int64 [n]: one draw from `rng`."""
    if count > NOISE_TABLE_SIZE:
        raise ValueError(f"images of {count} pixels exceed the noise table")
    return rng.integers(0, NOISE_TABLE_SIZE - count + 1, size=n)


def add_noise(images: np.ndarray, stds: np.ndarray, rng: np.random.Generator) -> None:
    """Adds zero-mean Gaussian noise in place: ``images[i] += stds[i] * N(0, 1)``.

    Each image reads a window of `noise_table` at an offset drawn from `rng` (one draw
    per image, also for ``stds[i] == 0``, so the draw count is fixed), pre-scaled by its
    std (cached per std): one add per pixel.

    Args:
      images: float32 [n, ...], modified in place.
      stds: [n] standard deviations, normalised units.
      rng: the generator of this element.
    """
    count = math.prod(images.shape[1:])
    offsets = noise_offsets(rng, len(images), count)
    for i, (offset, std) in enumerate(zip(offsets, np.asarray(stds, np.float32), strict=True)):
        if std:
            window = _scaled_noise_table(float(std))[offset : offset + count]
            images[i] += window.reshape(images.shape[1:])


def sample_boxes(
    rng: np.random.Generator,
    n: int,
    height: int,
    width: int,
    scale: Sequence[float] | np.ndarray,
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> np.ndarray:
    """Random-resized-crop boxes (torchvision's rule), `n` at once.

    Area fraction uniform in `scale`, aspect ratio (width / height) log-uniform in
    `ratio`; the first of `attempts` draws that fits is kept, else a centred crop of the
    clamped ratio. Position uniform over the valid offsets. One draw of
    ``n x (2 attempts + 2)`` uniforms from `rng`.

    Args:
      rng: the generator of this element.
      n: number of boxes.
      height, width: image size, pixels.
      scale: ``(lo, hi)`` area fraction range, or float [n, 2], one range per box.
      ratio: ``(lo, hi)`` aspect ratio range.
      attempts: draws per box before the fallback.

    Returns:
      int64 [n, 4] ``(top, left, height, width)``.
    """
    scale = np.asarray(scale, np.float64)
    lo, hi = scale[..., :1], scale[..., 1:]  # [1] or [n, 1]
    if not (np.all(lo > 0) and np.all(lo <= hi) and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"bad crop scale {scale.tolist()} or ratio {ratio}")
    u = rng.random((n, 2 * attempts + 2))
    side = np.sqrt((u[:, :attempts] * (hi - lo) + lo) * (height * width))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    root = np.exp(u[:, attempts : 2 * attempts] * (0.5 * (log_hi - log_lo)) + 0.5 * log_lo)
    w = np.rint(side * root)  # root = sqrt(aspect)
    h = np.rint(side / root)
    ok = (np.minimum(w, h) >= 1) & (w <= width) & (h <= height)
    first = ok.argmax(axis=1)
    pick = (np.arange(n), first)
    h, w = h[pick].astype(np.int64), w[pick].astype(np.int64)
    top = np.floor(u[:, -2] * (height - h + 1)).astype(np.int64)
    left = np.floor(u[:, -1] * (width - w + 1)).astype(np.int64)
    miss = ~ok[pick]
    if miss.any():  # torchvision's fallback: the whole image, ratio clamped into range
        fb_w, fb_h = width, height
        if width / height < ratio[0]:
            fb_h = round(width / ratio[0])
        elif width / height > ratio[1]:
            fb_w = round(height * ratio[1])
        h[miss], w[miss] = fb_h, fb_w
        top[miss], left[miss] = (height - fb_h) // 2, (width - fb_w) // 2
    boxes = np.stack([top, left, h, w], axis=1)
    # u < 1 keeps the offsets in range; guard against rounding all the same.
    np.minimum(boxes[:, :2], boxes[:, 2:] * -1 + (height, width), out=boxes[:, :2])
    return boxes


# ----------------------------------------------------------------------------- Grain ops
# The labelled pipeline's augmentations (``data.pipeline``). Each op maps an element dict
# holding "image" (float32 [H, W], normalised HU); a flip also moves "labels" [H, W].


class RandomFlip(grain.transforms.RandomMap):
    """Flips up-down with `vertical_prob` and left-right with `horizontal_prob`."""

    def __init__(self, horizontal_prob: float = 0.5, vertical_prob: float = 0.5):
        self.horizontal_prob, self.vertical_prob = float(horizontal_prob), float(vertical_prob)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        u = rng.random(2)
        probs = (self.vertical_prob, self.horizontal_prob)
        axes = tuple(a for a in (0, 1) if u[a] < probs[a])
        out = dict(element)
        for key in ("image", "labels"):
            if key in element and axes:
                out[key] = np.flip(element[key], axes).copy()
        return out


class RandomBrightness(grain.transforms.RandomMap):
    """With probability `prob`, adds a shift uniform in [-delta, delta] (normalised units)."""

    def __init__(self, prob: float, delta: float):
        self.prob, self.delta = float(prob), float(delta)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        u, d = rng.random(), rng.uniform(-self.delta, self.delta)
        if u >= self.prob:
            return element
        return {**element, "image": element["image"] + np.float32(d)}


class GaussianNoise(grain.transforms.RandomMap):
    """With probability `prob`, adds N(0, std^2) noise (normalised units, `add_noise`)."""

    def __init__(self, prob: float, std: float):
        self.prob, self.std = float(prob), float(std)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        apply = rng.random() < self.prob
        image = np.array(element["image"], dtype=np.float32)
        add_noise(image[None], np.array([self.std if apply else 0.0]), rng)
        return {**element, "image": image}
