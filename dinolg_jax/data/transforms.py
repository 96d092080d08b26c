"""Augmentations for single-channel CT slices: numpy kernels and the Grain ops built on them.

Every random choice comes from the `np.random.Generator` the caller passes (Grain hands
one to each `RandomMap` call, derived from the pipeline seed and the element index), so
results do not depend on the worker count and never touch the global numpy RNG.

Conventions:
  * Intensities: `normalize_hu` maps a Hounsfield window ``[lo, hi]`` linearly onto
    ``[-1, 1]`` (values outside the window are clipped first). Brightness deltas and
    noise standard deviations are in these normalised units (1 unit = (hi - lo) / 2 HU).
  * Boxes: int ``(top, left, height, width)`` in source pixels; a box covers rows
    ``top .. top + height - 1``.
  * Resizing: bilinear with half-pixel centres, coordinates clamped to the crop, no
    antialiasing (OpenCV ``INTER_LINEAR`` / torchvision ``antialias=False``); output
    pixel ``j`` samples the crop at ``(j + 0.5) * length / size - 0.5``.
  * Blur: Gaussian with ``mode="reflect"`` (half-sample symmetric) boundaries and the
    kernel of `scipy.ndimage.gaussian_filter` with the given ``truncate`` (radius
    ``int(truncate * sigma + 0.5)``); sigma in output pixels, as DINO's PIL blur.
  * Noise: additive Gaussian, read at a random offset from a fixed table of standard
    normal draws (`noise_table`). Drawing fresh normals costs ~17 ns per value with
    Grain's Philox generator (a quarter of a million values per multi-crop sample);
    reading a window of a 1 Mi-entry table costs one add.

No solarisation and no colour jitter: they do not suit HU images (the paper's Table 1).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

DEFAULT_HU_WINDOW = (-1000.0, 1000.0)
_BLOCK = 1 << 16  # outputs per bilinear block (index + tap buffers 1.5 MiB)
NOISE_TABLE_SIZE = 1 << 20  # standard normal values in the noise table (4 MiB float32)
_NOISE_TABLE_SEED = 0x5EED_CA1C


# ----------------------------------------------------------------------------- kernels

_SCRATCH = threading.local()


def scratch_buffer(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A reusable per-thread buffer of `shape` (contents undefined).

    Fresh multi-megabyte temporaries are mmapped and page-faulted on every call (about
    a thousand faults per multi-crop sample); reusing buffers avoids that.
    """
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    count = math.prod(shape)
    buf = bufs.get((name, np.dtype(dtype)))
    if buf is None or buf.size < count:
        buf = bufs[(name, np.dtype(dtype))] = np.empty(count, dtype)
    return buf[:count].reshape(shape)


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
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"HU window must have lo < hi, got {window}")
    image_hu = np.asarray(image_hu)
    if out is None:
        out = np.empty(image_hu.shape, np.float32)
    np.copyto(out, image_hu, casting="unsafe")
    np.clip(out, lo, hi, out=out)
    out -= lo
    out *= 2.0 / (hi - lo)
    out -= 1.0
    return out


def _sample_positions(
    start: np.ndarray, length: np.ndarray, size: int, limit: int, flip: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps along one axis for `n` crops: (index [n, size] intp, weight [n, size])."""
    grid = np.arange(0.5, size, dtype=np.float64)
    pos = np.multiply.outer(length / size, grid)
    pos -= 0.5
    np.maximum(pos, 0.0, out=pos)
    np.minimum(pos, (length - 1)[:, None], out=pos)
    pos += start[:, None]
    if flip.any():
        pos[flip] = pos[flip, ::-1]
    idx = pos.astype(np.intp)  # pos >= 0: truncation is floor
    np.minimum(idx, limit - 2, out=idx)
    pos -= idx
    return idx, pos.astype(np.float32)


def pair_table(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """complex64 [H, W] with ``image[y, x] + 1j * image[y, x + 1]`` (last column: itself).

    A bilinear tap pair along x is one 8-byte gather from this table, and
    ``Re(pair * ((1 - w) - 1j * w))`` interpolates it: one complex multiply.

    Args:
      image: float32 [H, W].
      out: optional complex64 [H, W] to fill.
    """
    image = np.asarray(image, dtype=np.float32)
    if out is None:
        out = np.empty(image.shape, np.complex64)
    parts = out.view(np.float32).reshape(*image.shape, 2)
    parts[..., 0] = image
    parts[:, :-1, 1] = image[:, 1:]
    parts[:, -1, 1] = image[:, -1]
    return out


def resized_crops(
    image: np.ndarray,
    boxes: np.ndarray,
    size: int,
    flip_v: np.ndarray | None = None,
    flip_h: np.ndarray | None = None,
    *,
    pairs: np.ndarray | None = None,
) -> np.ndarray:
    """Crops `n` boxes out of `image` and resizes each to ``size x size`` (bilinear).

    Only the output pixels are computed (two 8-byte gathers each from `pair_table`), so
    the cost does not depend on the crop area. A flip is folded into the sampling grid
    and is exact.

    Args:
      image: float32 [H, W], H, W >= 2.
      boxes: int [n, 4] ``(top, left, height, width)``, inside the image.
      size: output side, pixels.
      flip_v: bool [n], flip the crop upside down (default none).
      flip_h: bool [n], flip the crop left-right (default none).
      pairs: ``pair_table(image)`` when the caller already has it (several calls on
        one image); built here otherwise.

    Returns:
      float32 [n, size, size].
    """
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"image must be [H, W] with H, W >= 2, got {image.shape}")
    if pairs is None:
        pairs = pair_table(image, scratch_buffer("pairs", image.shape, np.complex64))
    elif pairs.shape != image.shape or pairs.dtype != np.complex64:
        raise ValueError(f"pairs must be complex64 {image.shape}, got {pairs.dtype} {pairs.shape}")
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    n = len(boxes)
    height, width = image.shape
    top, left, h, w = boxes.T
    if (
        np.any(h < 1)
        or np.any(w < 1)
        or np.any(top < 0)
        or np.any(left < 0)
        or np.any(top + h > height)
        or np.any(left + w > width)
    ):
        raise ValueError(f"crop boxes {boxes.tolist()} do not fit a {height}x{width} image")
    no = np.zeros(n, dtype=bool)
    ys, wy = _sample_positions(top, h, size, height, no if flip_v is None else np.asarray(flip_v))
    xs, wx = _sample_positions(left, w, size, width, no if flip_h is None else np.asarray(flip_h))
    weights = np.empty((n, 1, size), np.complex64)  # (1 - wx) - 1j * wx
    weights.real = 1.0 - wx[:, None, :]
    weights.imag = -wx[:, None, :]
    flat = np.ascontiguousarray(pairs).reshape(-1)
    out = np.empty((n, size, size), np.float32)
    rows = ys * width  # [n, S] offsets of the upper taps' rows
    # Blocks of about _BLOCK outputs bound the scratch buffers.
    step = max(1, _BLOCK // (size * size))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        _bilinear_block(flat, width, rows[lo:hi], xs[lo:hi], wy[lo:hi], weights[lo:hi], out[lo:hi])
    return out


def _bilinear_block(
    pairs: np.ndarray,
    width: int,
    rows: np.ndarray,
    xs: np.ndarray,
    wy: np.ndarray,
    weights: np.ndarray,
    out: np.ndarray,
) -> None:
    """Bilinear gather of a block of crops into `out` [m, S, S] (see `pair_table`)."""
    shape = out.shape
    # Per-thread scratch buffers (reused: no page faults); take(mode="clip") writes
    # straight into them (indices are valid by construction: boxes were checked).
    base = scratch_buffer("base", shape, np.intp)
    np.add(rows[:, :, None], xs[:, None, :], out=base)
    upper = scratch_buffer("upper", shape, np.complex64)
    lower = scratch_buffer("lower", shape, np.complex64)
    pairs.take(base, out=upper, mode="clip")  # rows y0: (x0, x0 + 1)
    upper *= weights  # real part: interpolated along x
    base += width
    pairs.take(base, out=lower, mode="clip")  # rows y0 + 1
    lower *= weights
    np.subtract(lower.real, upper.real, out=out)
    out *= wy[:, :, None]
    out += upper.real


def _half_kernels(sigmas: np.ndarray, truncate: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided taps of every sigma: ([n, R + 1] float32, radii [n]); R = max radius.

    Tap ``k`` of row ``i`` is the weight of offsets ``+-k`` (zero beyond radius ``i``),
    normalised so the full symmetric kernel sums to 1: scipy's Gaussian kernel,
    ``exp(-k^2 / (2 sigma^2))`` for ``|k| <= int(truncate * sigma + 0.5)``.
    """
    if not np.all(sigmas > 0):
        raise ValueError(f"blur sigmas must be > 0, got {sigmas}")
    radii = (truncate * sigmas + 0.5).astype(np.int64)
    k = np.arange(radii.max() + 1, dtype=np.float64)
    phi = np.exp(-0.5 * (k[None, :] / sigmas[:, None]) ** 2) * (k[None, :] <= radii[:, None])
    phi /= 2 * phi.sum(axis=1, keepdims=True) - phi[:, :1]
    return phi.astype(np.float32), radii


def gaussian_blur(images: np.ndarray, sigmas: np.ndarray, truncate: float = 3.0) -> np.ndarray:
    """Blurs each image with its own Gaussian (separable, reflect boundary).

    Equal, up to float32 rounding, to
    ``scipy.ndimage.gaussian_filter(images[i], sigmas[i], mode="reflect", truncate=truncate)``.
    Shifted adds over the batch sorted by kernel radius: tap ``k`` only touches the
    leading images whose radius reaches ``k``, so the cost follows each image's radius
    with one numpy call per tap for the whole batch.

    Args:
      images: float32 [n, S, S].
      sigmas: [n] standard deviations, pixels, > 0.
      truncate: kernel radius in standard deviations.

    Returns:
      float32 [n, S, S] (a new array).
    """
    images = np.asarray(images, dtype=np.float32)
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or len(images) != len(sigmas):
        raise ValueError(f"need [n, S, S] images, [n] sigmas; got {images.shape}, {sigmas.shape}")
    if len(images) == 0:
        return images.copy()
    taps, radii = _half_kernels(sigmas, truncate)
    if radii.max() >= images.shape[1]:
        raise ValueError(
            f"blur radius {radii.max()} must be smaller than the side {images.shape[1]}"
        )
    order = np.argsort(-radii, kind="stable")
    taps = taps[order]
    reach = np.searchsorted(-radii[order], -np.arange(taps.shape[1]), side="right")
    half = _blur_axis1(
        images[order], taps, reach, scratch_buffer("blur_half", images.shape, np.float32)
    )
    out = scratch_buffer("blur_out", images.shape, np.float32)
    _blur_axis1(half.transpose(0, 2, 1), taps, reach, out.transpose(0, 2, 1))
    result = np.empty(images.shape, np.float32)
    result[order] = out
    return result


def _blur_axis1(x: np.ndarray, taps: np.ndarray, reach: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Symmetric correlation along axis 1 of x [n, S, T] into `out` by shifted adds.

    taps: [n, R + 1] one-sided weights; reach[k]: number of leading images with tap k.
    """
    n, size, cols = x.shape
    radius = taps.shape[1] - 1
    pad = scratch_buffer("blur_pad", (n, size + 2 * radius, cols), np.float32)
    pad[:, radius : radius + size] = x
    if radius:
        pad[:, :radius] = x[:, radius - 1 :: -1]
        pad[:, radius + size :] = x[:, : -radius - 1 : -1]
    np.multiply(pad[:, radius : radius + size], taps[:, 0, None, None], out=out)
    tmp = scratch_buffer("blur_tmp", (n, size, cols), np.float32)
    for k in range(1, radius + 1):
        m = reach[k]
        lo, hi = radius - k, radius + k
        np.add(pad[:m, lo : lo + size], pad[:m, hi : hi + size], tmp[:m])
        tmp[:m] *= taps[:m, k, None, None]
        out[:m] += tmp[:m]
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


def add_noise(images: np.ndarray, stds: np.ndarray, rng: np.random.Generator) -> None:
    """Adds zero-mean Gaussian noise in place: ``images[i] += stds[i] * N(0, 1)``.

    Each image reads a window of `noise_table` at an offset drawn from `rng` (one draw
    per image, also for ``stds[i] == 0``, so the draw count is fixed).

    Args:
      images: float32 [n, ...], modified in place.
      stds: [n] standard deviations, normalised units.
      rng: the generator of this element.
    """
    table = noise_table()
    count = int(np.prod(images.shape[1:]))
    if count > len(table):
        raise ValueError(f"images of {count} pixels exceed the noise table")
    offsets = rng.integers(0, len(table) - count + 1, size=len(images))
    tmp = scratch_buffer("noise", images.shape[1:], np.float32)
    for i, (offset, std) in enumerate(zip(offsets, np.asarray(stds, np.float32), strict=True)):
        if std:
            window = table[offset : offset + count].reshape(images.shape[1:])
            images[i] += np.multiply(window, std, out=tmp)


def sample_boxes(
    rng: np.random.Generator,
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> np.ndarray:
    """Random-resized-crop boxes (torchvision's rule), `n` at once.

    Area fraction uniform in `scale`, aspect ratio (width / height) log-uniform in
    `ratio`; the first of `attempts` draws that fits is kept, else a centred crop of the
    clamped ratio. Position uniform over the valid offsets.

    Returns:
      int64 [n, 4] ``(top, left, height, width)``.
    """
    if not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"bad crop scale {scale} or ratio {ratio}")
    area = height * width * rng.uniform(scale[0], scale[1], (n, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, attempts)))
    w = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    ok = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
    first = np.argmax(ok, axis=1)
    h = h[np.arange(n), first]
    w = w[np.arange(n), first]
    # torchvision's fallback: the whole image, with the ratio clamped into range.
    in_ratio = width / height
    fb_w, fb_h = width, height
    if in_ratio < ratio[0]:
        fb_h = round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fb_w = round(height * ratio[1])
    miss = ~ok.any(axis=1)
    h = np.where(miss, fb_h, h)
    w = np.where(miss, fb_w, w)
    u = rng.random((n, 2))
    top = np.minimum(np.floor(u[:, 0] * (height - h + 1)), height - h).astype(np.int64)
    left = np.minimum(np.floor(u[:, 1] * (width - w + 1)), width - w).astype(np.int64)
    top = np.where(miss, (height - h) // 2, top)
    left = np.where(miss, (width - w) // 2, left)
    return np.stack([top, left, h, w], axis=1)


# ----------------------------------------------------------------------------- Grain ops
# Each op maps an element dict holding "image" (float32 [H, W] after `NormalizeHU`);
# ops that move pixels also move "labels" [H, W] when present (nearest: pure slicing).


class NormalizeHU(grain.transforms.Map):
    """``element["image"]`` int16 HU [H, W] -> float32 in [-1, 1] (see `normalize_hu`)."""

    def __init__(self, window: Sequence[float] = DEFAULT_HU_WINDOW):
        self.window = (float(window[0]), float(window[1]))

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        return {**element, "image": normalize_hu(element["image"], self.window)}


class RandomCrop(grain.transforms.RandomMap):
    """A `size` x `size` window at a uniform position (image and labels alike)."""

    def __init__(self, size: int):
        self.size = int(size)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        height, width = element["image"].shape
        if self.size > min(height, width):
            raise ValueError(f"crop {self.size} larger than image {height}x{width}")
        top = int(rng.integers(0, height - self.size + 1))
        left = int(rng.integers(0, width - self.size + 1))
        win = (slice(top, top + self.size), slice(left, left + self.size))
        out = {**element, "image": element["image"][win].copy()}
        if "labels" in element:
            out["labels"] = element["labels"][win].copy()
        return out


class RandomResizedCrop(grain.transforms.RandomMap):
    """`sample_boxes` then bilinear `resized_crops` to `size` (image only)."""

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = element["image"]
        box = sample_boxes(rng, 1, *image.shape, self.scale, self.ratio)
        return {**element, "image": resized_crops(image, box, self.size)[0]}


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


class GaussianBlur(grain.transforms.RandomMap):
    """With probability `prob`, `gaussian_blur` with sigma uniform in `sigma` (pixels)."""

    def __init__(self, prob: float, sigma: Sequence[float] = (0.1, 2.0), truncate: float = 3.0):
        self.prob, self.sigma, self.truncate = float(prob), tuple(sigma), float(truncate)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        u, s = rng.random(), rng.uniform(*self.sigma)
        if u >= self.prob:
            return element
        image = gaussian_blur(element["image"][None], np.array([s]), self.truncate)[0]
        return {**element, "image": image}


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
