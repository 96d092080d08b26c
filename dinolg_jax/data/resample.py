"""Bilinear crop resampling and Gaussian blur of float32 images, numpy only.

Conventions (shared with `transforms`):
  * Boxes: int ``(top, left, height, width)`` in source pixels; a box covers rows
    ``top .. top + height - 1``.
  * Resizing: bilinear with half-pixel centres, coordinates clamped to the crop, no
    antialiasing (OpenCV ``INTER_LINEAR`` / torchvision ``antialias=False``); output
    pixel ``j`` samples the crop at ``(j + 0.5) * length / size - 0.5``. Flips are
    folded into the sampling grid (exact).
  * Blur: Gaussian with ``mode="reflect"`` (half-sample symmetric) boundaries and the
    kernel of `scipy.ndimage.gaussian_filter` with the given ``truncate`` (radius
    ``int(truncate * sigma + 0.5)``); sigma in output pixels, as DINO's PIL blur.

Speed (one core, the multi-crop of a 512 x 512 slice: 2 x 224 + 16 x 96 crops, about
250 k output pixels): numpy costs ~0.1-0.15 ns per value for a contiguous elementwise
op or a row copy, but ~1-1.5 ns per element gather and ~1 us per call. So resampling
is separable with plain row copies for the rows (`_Resampler`), a single 8-byte gather
per output for the columns, and a blur folded into it: the resampling grid of a blurred
crop is extended by the blur radius at reflected positions (which is exactly the
``"reflect"`` padding) and the filter runs as long contiguous shifted adds over all
blurred crops of a size at once (`_blur_padded`).
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import numpy as np

_SCRATCH = threading.local()


def scratch_buffer(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A reusable per-thread buffer of `shape` (contents undefined).

    Fresh multi-megabyte temporaries are mmapped and page-faulted on every call; reusing
    buffers avoids that. Never return one to a caller that keeps it.
    """
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    count = math.prod(shape)
    buf = bufs.get((name, np.dtype(dtype)))
    if buf is None or buf.size < count:
        buf = bufs[(name, np.dtype(dtype))] = np.empty(count, dtype)
    return buf[:count].reshape(shape)


@functools.lru_cache(maxsize=64)
def _grid(size: int, pad: int) -> np.ndarray:
    """``j + 0.5`` for the output positions ``j = -pad .. size + pad - 1``: float64 [2, E].

    Positions outside the crop are reflected into it (scipy's ``"reflect"``: ``-1 -> 0``,
    ``size -> size - 1``); row 1 holds the same for the flipped crop (``j -> size - 1 -
    j``). Cached, read-only.
    """
    j = np.arange(-pad, size + pad)
    j = np.where(j < 0, -1 - j, j)
    j = np.where(j >= size, 2 * size - 1 - j, j)
    grid = np.stack([j, size - 1 - j]) + 0.5
    grid.flags.writeable = False
    return grid


def _axis_taps(
    start: np.ndarray, length: np.ndarray, size: int, limit: np.ndarray, flip: np.ndarray, pad: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps along one axis for `n` crops, padded by `pad` reflected outputs.

    Output position ``j`` (``-pad .. size + pad - 1``) is reflected into the crop and
    flipped (`_grid`), then samples the crop at ``(j + 0.5) * length / size - 0.5``,
    clamped to the crop.

    Args:
      start, length: int [n], crop start and length along the indexed axis.
      size: output side.
      limit: int [n], extent of the indexed axis; lower taps stay <= limit - 2.
      flip: bool [n].
      pad: extra outputs per side, ``0 <= pad <= size``.

    Returns:
      (lower tap intp [n, size + 2 pad], weight of the upper tap float64 [n, size + 2 pad]).
    """
    pos = _grid(size, pad)[flip.astype(np.intp)]
    pos *= (length / size)[:, None]
    pos -= 0.5
    np.maximum(pos, 0.0, out=pos)
    np.minimum(pos, (length - 1)[:, None], out=pos)
    pos += start[:, None]
    lower = pos.astype(np.intp)  # pos >= 0: truncation is floor
    np.minimum(lower, (limit - 2)[:, None], out=lower)
    pos -= lower
    return lower, pos


def _check_boxes(
    image: np.ndarray, boxes: Any, flip_v: Any, flip_h: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated int64 [n, 4] boxes and bool [n] flips (None: no flip)."""
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"image must be [H, W] with H, W >= 2, got {image.shape}")
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    n = len(boxes)
    if n:
        top, left, h, w = boxes.min(axis=0).tolist()
        bottom, right = (boxes[:, :2] + boxes[:, 2:]).max(axis=0).tolist()
        if min(top, left) < 0 or min(h, w) < 1 or bottom > image.shape[0] or right > image.shape[1]:
            raise ValueError(f"crop boxes {boxes.tolist()} do not fit a {image.shape} image")
    flip_v = np.zeros(n, bool) if flip_v is None else np.asarray(flip_v, bool).reshape(n)
    flip_h = np.zeros(n, bool) if flip_h is None else np.asarray(flip_h, bool).reshape(n)
    return boxes, flip_v, flip_h


class _Resampler:
    """Bilinear resampling of `n` boxes of one image to ``size`` (times ``scale``).

    `crop(i, pad_i)` resamples box ``i`` on its output grid padded by ``pad_i`` reflected
    positions per side (0 or the ``pad`` given here; see `_axis_taps`). Separable, one
    crop at a time while its rows are in cache: (1) the two source rows of every output
    row, cut to the box's columns, are copied (row copies, ~0.15 ns per value, where an
    element gather costs ~1.5 ns) and interpolated; (2) along x, one 8-byte gather per
    output reads both taps at once from an overlapping complex64 view of those rows,
    ``(t[x], t[x + 1])``, and ``Re(pair * (s (1 - w) - 1j s w))`` interpolates and
    scales in one multiply. The image must be float32, C-contiguous; boxes and flips as
    `_check_boxes` returns them.
    """

    def __init__(self, image, boxes, size, flip_v, flip_h, pad, scale):
        height, width = image.shape
        top, left, h, w = boxes.T
        n = len(boxes)
        self.image, self.size, self.pad = image, size, pad
        span = np.maximum(w, 2)  # columns read per crop (x + 1 must exist)
        c0 = np.minimum(left, width - span)
        lower, weight = _axis_taps(
            np.concatenate([top, left - c0]),
            np.concatenate([h, w]),
            size,
            np.concatenate([np.full(n, height), span]),
            np.concatenate([flip_v, flip_h]),
            pad,
        )
        self.span, self.c0 = span.tolist(), c0.tolist()
        self.rows = np.concatenate([lower[:n], lower[:n] + 1], axis=1)  # [n, 2E]: lower, upper
        # The same for the unpadded window of the grid (outputs 0 .. size - 1).
        self.window_rows = self.rows[
            :, np.r_[pad : pad + size, 3 * pad + size : 3 * pad + 2 * size]
        ]
        self.wy = weight[:n, :, None].astype(np.float32)
        self.cols = lower[n:]
        self.cw = np.empty((n, lower.shape[1]), np.complex64)
        self.cw.real = scale * (1.0 - weight[n:])
        self.cw.imag = -scale * weight[n:]

    def crop(self, i: int, pad: int) -> np.ndarray:
        """Box i with ``pad`` reflected outputs per side: a float32 [E, E] strided view."""
        lo, hi = self.pad - pad, self.pad + self.size + pad
        ext, span, c0 = hi - lo, self.span[i], self.c0[i]
        rows = self.rows[i] if lo == 0 else self.window_rows[i]
        both = self.image[:, c0 : c0 + span][rows]  # [2E, span]: lower rows, upper rows
        lower, upper = both[:ext], both[ext:]
        upper -= lower
        upper *= self.wy[i, lo:hi]
        upper += lower
        pairs = np.ndarray((ext, span - 1), np.complex64, upper, 0, (4 * span, 4))
        crop = pairs[:, self.cols[i, lo:hi]]  # [E, E], column-major
        crop *= self.cw[i, lo:hi]
        return crop.real


def resized_crops(
    image: np.ndarray,
    boxes: np.ndarray,
    size: int,
    flip_v: np.ndarray | None = None,
    flip_h: np.ndarray | None = None,
) -> np.ndarray:
    """Crops `n` boxes out of `image` and resizes each to ``size x size`` (bilinear).

    Separable (see `_Resampler`): the cost follows the output size and the box width,
    not the box area. A flip is folded into the sampling grid and is exact.

    Args:
      image: float [H, W], H, W >= 2.
      boxes: int [n, 4] ``(top, left, height, width)``, inside the image.
      size: output side, pixels.
      flip_v: bool [n], flip the crop upside down (default none).
      flip_h: bool [n], flip the crop left-right (default none).

    Returns:
      float32 [n, size, size].
    """
    return resized_blurred_crops(image, boxes, size, flip_v, flip_h)


def resized_blurred_crops(
    image: np.ndarray,
    boxes: np.ndarray,
    size: int,
    flip_v: np.ndarray | None = None,
    flip_h: np.ndarray | None = None,
    sigmas: np.ndarray | None = None,
    *,
    truncate: float = 3.0,
    scale: float = 1.0,
    shift: np.ndarray | None = None,
) -> np.ndarray:
    """``gaussian_blur(scale * resized_crops(...), sigmas) + shift``, fused.

    A blurred crop is resampled with its output grid extended by the blur radius at
    reflected positions: exactly the ``"reflect"`` padding the blur needs, so no padding
    is copied; blurred crops are then filtered together (`_blur_padded`).

    Args:
      image: float [H, W], H, W >= 2.
      boxes: int [n, 4] ``(top, left, height, width)``, inside the image.
      size: output side, pixels.
      flip_v, flip_h: bool [n] flips (default none).
      sigmas: [n] blur standard deviations in output pixels, 0 for no blur (default
        none); kernel as `gaussian_blur`.
      truncate: blur radius in standard deviations.
      scale: factor on the resized values.
      shift: [n] added to each crop after the blur (default 0).

    Returns:
      float32 [n, size, size].
    """
    image = np.asarray(image)
    boxes, flip_v, flip_h = _check_boxes(image, boxes, flip_v, flip_h)
    image = np.ascontiguousarray(image, dtype=np.float32)
    n = len(boxes)
    shift = np.zeros(n, np.float32) if shift is None else np.asarray(shift, np.float32)
    sigmas = np.zeros(n) if sigmas is None else np.asarray(sigmas, np.float64).reshape(-1)
    if len(sigmas) != n or len(shift) != n:
        raise ValueError(f"need {n} sigmas and shifts, got {len(sigmas)} and {len(shift)}")
    if np.any(sigmas < 0):
        raise ValueError(f"blur sigmas must be >= 0, got {sigmas}")
    radii = (truncate * sigmas + 0.5).astype(np.int64).tolist()  # plain ints: n is small
    pad = max(radii, default=0)
    if pad >= size:
        raise ValueError(f"blur radius {pad} must be smaller than the side {size}")
    resampler = _Resampler(image, boxes, size, flip_v, flip_h, pad, scale)
    out = np.empty((n, size, size), np.float32)
    shift = shift.tolist()
    for i in range(n):
        if not radii[i]:
            np.add(resampler.crop(i, 0), shift[i], out=out[i])
    blurred = sorted((i for i in range(n) if radii[i]), key=lambda i: -radii[i])
    if blurred:
        ext = size + 2 * pad
        # Transposed (the crops come column-major): the blur is symmetric in x and y.
        padded = scratch_buffer("blur_in", (len(blurred), ext, ext), np.float32)
        for k, i in enumerate(blurred):
            padded[k] = resampler.crop(i, pad).T
        taps, _ = _half_kernels(sigmas[blurred], truncate)
        for i, crop in zip(blurred, _blur_padded(padded, taps), strict=True):
            np.add(crop.T, shift[i], out=out[i])
    return out


def _half_kernels(sigmas: np.ndarray, truncate: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided taps of every sigma: ([n, R + 1] float32, radii [n]); R = max radius.

    Tap ``k`` of row ``i`` is the weight of offsets ``+-k`` (zero beyond radius ``i``),
    normalised so the full symmetric kernel sums to 1: scipy's Gaussian kernel,
    ``exp(-k^2 / (2 sigma^2))`` for ``|k| <= int(truncate * sigma + 0.5)``.
    """
    if not np.all(sigmas > 0):
        raise ValueError(f"blur sigmas must be > 0, got {sigmas}")
    radii = (truncate * sigmas + 0.5).astype(np.int64)
    k = np.arange(radii.max() + 1)
    phi = np.exp(np.multiply.outer(-0.5 / (sigmas * sigmas), k * k))
    phi[k > radii[:, None]] = 0.0
    phi /= 2 * phi.sum(axis=1, keepdims=True) - phi[:, :1]
    return phi.astype(np.float32), radii


def gaussian_blur(images: np.ndarray, sigmas: np.ndarray, truncate: float = 3.0) -> np.ndarray:
    """Blurs each image with its own Gaussian (separable, reflect boundary).

    Equal, up to float32 rounding, to
    ``scipy.ndimage.gaussian_filter(images[i], sigmas[i], mode="reflect", truncate=truncate)``.

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
    pad = taps.shape[1] - 1
    padded = np.pad(images[order], ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    result = np.empty(images.shape, np.float32)
    result[order] = _blur_padded(padded, taps[order])
    return result


def _blur_padded(padded: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable symmetric filter of padded images; returns the [m, S, S] interiors (a view).

    padded: float32 [m, E, E], C-contiguous, each image extended by ``pad = R`` reflected
    pixels per side (E = S + 2R); overwritten. taps: [m, R + 1] one-sided weights with
    radii sorted in decreasing order (row i zero beyond its radius), so tap ``k`` only
    touches the leading images whose radius reaches it: the cost follows each radius.

    Shifted adds on the flattened images (long contiguous runs): along y a neighbour is
    E elements away, along x one. The y pass makes the S interior rows, all E columns;
    the x pass reads only those rows (near row ends it mixes rows, but only interior
    columns are kept).
    """
    m, ext, _ = padded.shape
    pad = taps.shape[1] - 1
    size, count = ext - 2 * pad, ext * ext
    reach = np.count_nonzero(taps, axis=0)  # images whose kernel has tap k
    x = padded.reshape(m, count)
    y = scratch_buffer("blur_mid", (m, count), np.float32)
    tmp = scratch_buffer("blur_tmp", (m, count), np.float32)
    for step, lo, hi, src, dst in (
        (ext, pad * ext, (pad + size) * ext, x, y),  # along y: interior rows
        (1, pad * ext + pad, (pad + size) * ext - pad, y, x),  # along x: within them
    ):
        np.multiply(src[:, lo:hi], taps[:, :1], out=dst[:, lo:hi])
        for k in range(1, pad + 1):
            r, d = reach[k], k * step
            t = tmp[:r, lo:hi]
            np.add(src[:r, lo - d : hi - d], src[:r, lo + d : hi + d], out=t)
            t *= taps[:r, k : k + 1]
            dst[:r, lo:hi] += t
    return padded[:, pad : pad + size, pad : pad + size]
