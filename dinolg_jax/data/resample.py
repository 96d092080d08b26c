"""Crop resampling, flips and Gaussian blur of float32 images through OpenCV.

Conventions (shared with `transforms`):
  * Boxes: int ``(top, left, height, width)`` in source pixels; a box covers rows
    ``top .. top + height - 1``.
  * Resizing: bilinear with half-pixel centres, coordinates clamped to the crop, no
    antialiasing (``cv2.resize(..., interpolation=INTER_LINEAR)``, torchvision
    ``antialias=False``); output pixel ``j`` samples the crop at
    ``(j + 0.5) * length / size - 0.5``. OpenCV interpolates float32 with float weights
    (equal to a float64 reference to ~5e-7); a flip is applied to the resized crop, which
    is exactly the resampling of the flipped crop (the grid is symmetric).
  * Blur: Gaussian with ``cv2.BORDER_REFLECT`` (``fedcba|abcdef``, scipy's ``"reflect"``)
    and the kernel of `scipy.ndimage.gaussian_filter` with the given ``truncate``:
    radius ``int(truncate * sigma + 0.5)``, ``ksize = 2 radius + 1``; sigma in output
    pixels, as DINO's PIL blur. Radius 0 is the identity. Blur and flip commute.
  * Intensity: a crop is finished by one ``cv2.addWeighted`` pass,
    ``alpha * crop + beta * noise + gamma``, written straight into its output slot as
    float32 or as uint16 (`crop_codec`), so scaling, brightness, noise and the output
    encoding cost one pass together.

Threads: crops are small (96-224 px), so OpenCV's thread pool costs more than it gains and
competes with Grain workers and the JAX runtime; importing this module sets
``cv2.setNumThreads(1)`` (Grain workers set it again in their init).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from dinolg_jax.data import crop_codec

cv2.setNumThreads(1)

_SCRATCH = threading.local()
_FLIP_CODE = {(False, False): None, (True, False): 0, (False, True): 1, (True, True): -1}
_CV_DTYPE = {np.dtype(np.float32): cv2.CV_32F, np.dtype(np.uint16): cv2.CV_16U}


def scratch_buffer(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A reusable per-thread buffer of `shape` (contents undefined).

    Fresh multi-hundred-kilobyte temporaries are mmapped and page-faulted on every call;
    reusing buffers avoids that. Never return one to a caller that keeps it.
    """
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    count = math.prod(shape)
    buf = bufs.get((name, np.dtype(dtype)))
    if buf is None or buf.size < count:
        buf = bufs[(name, np.dtype(dtype))] = np.empty(count, dtype)
    return buf[:count].reshape(shape)


def blur_radii(sigmas: np.ndarray, truncate: float) -> np.ndarray:
    """Kernel radii ``int(truncate * sigma + 0.5)`` (scipy's), int64 [n]; 0: no blur."""
    return (truncate * np.asarray(sigmas, np.float64) + 0.5).astype(np.int64)


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


def render_crops(
    out: np.ndarray,
    image: np.ndarray,
    boxes: Sequence[Sequence[int]],
    flips: Sequence[Sequence[bool]],
    sigmas: Sequence[float],
    radii: Sequence[int],
    alpha: float,
    gammas: Sequence[float],
    noise_stds: Sequence[float] | None = None,
    noise_offsets: Sequence[int] | None = None,
    noise_table: np.ndarray | None = None,
) -> None:
    """Resize, blur, flip and finish `n` crops of one image into `out` (no validation).

    Crop ``k``: ``alpha * flip(blur(resize(box_k))) + noise_stds[k] * noise_k +
    gammas[k]``, where ``noise_k`` is ``noise_table[noise_offsets[k] :][: S * S]``; then
    encoded as `out`'s dtype (`crop_codec`: float32 as is, uint16 fixed point). The
    callers (`resized_blurred_crops`, `multicrop.MultiCrop`) validate the boxes; the
    per-crop work is four OpenCV calls at most, so plain Python lists are the fast input.

    Args:
      out: float32 or uint16 [n, S, S], each ``out[k]`` C-contiguous (e.g. a crops-major
        batch's ``batch[:, b, :, :, 0]``); written.
      image: float32 [H, W] with unit column stride (a view is fine).
      boxes: n ``(top, left, height, width)`` inside the image.
      flips: n ``(vertical, horizontal)``.
      sigmas, radii: blur standard deviations (output pixels) and kernel radii
        (`blur_radii`); radius 0 skips the blur. Every radius must be < S.
      alpha: factor on the resized values.
      gammas: n values added last (after the blur).
      noise_stds, noise_offsets, noise_table: additive noise (None: none); a std of 0
        adds none.
    """
    size = out.shape[-1]
    mul, add = crop_codec.host_affine(out.dtype)
    encoded = out.dtype != np.float32
    work = scratch_buffer("render", (size, size), np.float32) if encoded else None
    count = size * size
    for k, (top, left, h, w) in enumerate(boxes):
        dst = out[k]
        crop = work if encoded else dst
        cv2.resize(
            image[top : top + h, left : left + w],
            (size, size),
            dst=crop,
            interpolation=cv2.INTER_LINEAR,
        )
        r = radii[k]
        if r:
            s = sigmas[k]
            cv2.GaussianBlur(
                crop, (2 * r + 1, 2 * r + 1), s, dst=crop, sigmaY=s, borderType=cv2.BORDER_REFLECT
            )
        code = _FLIP_CODE[(bool(flips[k][0]), bool(flips[k][1]))]
        if code is not None:
            cv2.flip(crop, code, dst=crop)
        std = 0.0 if noise_stds is None else float(noise_stds[k])
        gamma = float(gammas[k])
        if not encoded and std == 0.0 and alpha == 1.0 and gamma == 0.0:
            continue
        if std:
            offset = int(noise_offsets[k])
            noise = noise_table[offset : offset + count].reshape(size, size)
        else:
            noise = crop
        cv2.addWeighted(
            crop,
            alpha * mul,
            noise,
            std * mul,
            gamma * mul + add,
            dst=dst,
            dtype=_CV_DTYPE[out.dtype],
        )


def resized_crops(
    image: np.ndarray,
    boxes: np.ndarray,
    size: int,
    flip_v: np.ndarray | None = None,
    flip_h: np.ndarray | None = None,
) -> np.ndarray:
    """Crops `n` boxes out of `image` and resizes each to ``size x size`` (bilinear).

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
    """``gaussian_blur(scale * resized_crops(...), sigmas) + shift`` (see `render_crops`).

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
    shift = np.zeros(n) if shift is None else np.asarray(shift, np.float64).reshape(-1)
    sigmas = np.zeros(n) if sigmas is None else np.asarray(sigmas, np.float64).reshape(-1)
    if len(sigmas) != n or len(shift) != n:
        raise ValueError(f"need {n} sigmas and shifts, got {len(sigmas)} and {len(shift)}")
    if np.any(sigmas < 0):
        raise ValueError(f"blur sigmas must be >= 0, got {sigmas}")
    radii = blur_radii(sigmas, truncate)
    if n and radii.max() >= size:
        raise ValueError(f"blur radius {radii.max()} must be smaller than the side {size}")
    out = np.empty((n, size, size), np.float32)
    flips = np.stack([flip_v, flip_h], axis=1)
    render_crops(
        out, image, boxes.tolist(), flips.tolist(), sigmas.tolist(), radii.tolist(),
        float(scale), shift.tolist(),
    )  # fmt: skip
    return out


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
    if not np.all(sigmas > 0):
        raise ValueError(f"blur sigmas must be > 0, got {sigmas}")
    radii = blur_radii(sigmas, truncate)
    if len(images) and radii.max() >= images.shape[1]:
        raise ValueError(
            f"blur radius {radii.max()} must be smaller than the side {images.shape[1]}"
        )
    out = np.array(images, dtype=np.float32, order="C")  # a new array, blurred in place
    for image, r, s in zip(out, radii.tolist(), sigmas.tolist(), strict=True):
        if r:
            cv2.GaussianBlur(
                image, (2 * r + 1, 2 * r + 1), s, dst=image, sigmaY=s,
                borderType=cv2.BORDER_REFLECT,
            )  # fmt: skip
    return out
