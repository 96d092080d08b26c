"""DINO multi-crop with label-guided local crops (the paper's section 3.2, Tables 1 and 3).

One slice record becomes ``n_global`` global crops and ``n_local_random +
n_local_guided`` local crops. Each crop: random resized crop (scale range of its kind,
aspect ratio in `ratio`), vertical and horizontal flips, Gaussian blur (probability per
crop as in DINO: first global 1.0, second global 0.1, locals 0.5), brightness shift,
additive noise. A guided local crop on a slice with calcium is centred on a lesion
centre drawn from ``lesion_centers``, moved by a random offset (uniform per axis, at
most ``guided_offset_px`` and at most half the crop side minus 2 px), with a random size
from the local scale range, then shifted inside the image; it always contains that
lesion centre (for crop sides >= 4 px). On a slice without calcium it is an ordinary
random local crop. The local crops are ordered random first, guided last.

Output of `MultiCrop.random_map` (per slice)::

    "global":      float32 [n_global, G, G, 1], normalised (see transforms.normalize_hu)
    "local":       float32 [n_local, L, L, 1]
    "guided_hit":  bool [n_local], True where a guided crop was centred on a lesion
    "has_calcium": bool
  and with ``debug=True`` also
    "boxes":       int32 [n_global + n_local, 4] (top, left, height, width), source px
    "flips":       bool [n_global + n_local, 2] (vertical, horizontal)
    "lesion":      float32 [n_local, 2] (row, col) lesion centre a guided crop targeted,
                   NaN where none
    "blur_sigma":  float32 [n_global + n_local], 0 where the crop was not blurred
    "study", "slice": the record's, when present

Two stages: `MultiCrop.plan` makes every random draw of a sample (from the generator
Grain hands to that element, so nothing depends on the worker count) and touches no
pixel; `MultiCrop.render` cuts, resizes, blurs, flips and finishes the crops of a list of
plans with OpenCV (`resample.render_crops`) straight into a crops-major batch, float32 or
uint16 (`crop_codec`). The pipeline plans per element and renders per batch
(`pipeline.CropsMajorBatch`), so no per-sample crop arrays are allocated or copied;
`random_map` does both for one slice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import grain
import ml_collections
import numpy as np

from dinolg_jax.data import resample, transforms


@dataclasses.dataclass(kw_only=True, eq=False)
class MultiCrop(grain.transforms.RandomMap):
    """DINO / DINO-LG multi-crop of a decoded slice record (a Grain `RandomMap`).

    Input element: a dict with ``image`` int16 [H, W] HU, ``lesion_centers`` float32
    [K, 2] (row, col) and ``has_calcium``; other fields are ignored. The fields are the
    settings (``config.data`` names them the same, see `from_config`); the defaults are
    the paper's recipe.
    """

    hu_window: Sequence[float] = transforms.DEFAULT_HU_WINDOW  # (lo, hi) HU -> [-1, 1]
    global_size: int = 224  # global crop side, px
    local_size: int = 96  # local crop side, px
    global_scale: Sequence[float] = (0.4, 1.0)  # area fraction range of a global crop
    local_scale: Sequence[float] = (0.05, 0.4)  # area fraction range of a local crop
    ratio: Sequence[float] = (3 / 4, 4 / 3)  # width / height range
    n_global: int = 2
    n_local_random: int = 12
    n_local_guided: int = 4
    guided_offset_px: float = 8.0  # max offset of a guided crop's centre from its lesion
    blur_probs: Sequence[float] = (1.0, 0.1, 0.5)  # first global, other globals, locals
    blur_sigma: Sequence[float] = (0.1, 2.0)  # sigma range, output px
    blur_truncate: float = 3.0  # kernel radius in sigmas
    hflip_prob: float = 0.5
    vflip_prob: float = 0.5
    brightness_prob: float = 0.8
    brightness_delta: float = 0.1  # max shift, normalised units
    noise_prob: float = 0.5
    noise_std: float = 0.02  # normalised units
    debug: bool = False  # add boxes, flips, lesion, blur_sigma, study, slice to the output

    # The record's array fields read (`records.decode(..., fields=RECORD_FIELDS)`).
    RECORD_FIELDS: ClassVar[tuple[str, ...]] = ("image", "lesion_centers")

    def __post_init__(self):
        if self.n_global < 1 or self.n_local_random < 0 or self.n_local_guided < 0:
            raise ValueError(
                f"crop counts must be n_global >= 1, locals >= 0; got {self.n_global}, "
                f"{self.n_local_random}, {self.n_local_guided}"
            )
        if len(self.blur_probs) != 3:
            raise ValueError(
                f"blur_probs is (first global, other globals, locals): {self.blur_probs}"
            )
        if self.guided_offset_px < 0:
            raise ValueError(f"guided_offset_px must be >= 0, got {self.guided_offset_px}")
        self.hu_window = tuple(float(v) for v in self.hu_window)
        self.global_size, self.local_size = int(self.global_size), int(self.local_size)
        self.global_scale, self.local_scale = tuple(self.global_scale), tuple(self.local_scale)
        self.ratio = tuple(self.ratio)
        self.n_global, self.n_local_random = int(self.n_global), int(self.n_local_random)
        self.n_local_guided = int(self.n_local_guided)
        self.guided_offset_px = float(self.guided_offset_px)
        self.blur_probs = tuple(float(p) for p in self.blur_probs)
        self.blur_sigma, self.blur_truncate = tuple(self.blur_sigma), float(self.blur_truncate)
        self.hflip_prob, self.vflip_prob = float(self.hflip_prob), float(self.vflip_prob)
        self.brightness_prob = float(self.brightness_prob)
        self.brightness_delta = float(self.brightness_delta)
        self.noise_prob, self.noise_std = float(self.noise_prob), float(self.noise_std)
        self.debug = bool(self.debug)
        radius = int(resample.blur_radii(np.array([max(self.blur_sigma)]), self.blur_truncate)[0])
        if any(self.blur_probs) and radius >= min(self.global_size, self.local_size):
            raise ValueError(
                f"blur radius {radius} must be smaller than the crop sides "
                f"{self.global_size}, {self.local_size}"
            )

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, *, debug: bool = False) -> MultiCrop:
        """Builds the op from a ``config.data`` section: every field but ``debug`` by name."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "debug"]
        return cls(**{name: data[name] for name in names}, debug=debug)

    @property
    def n_local(self) -> int:
        return self.n_local_random + self.n_local_guided

    @property
    def guided_mask(self) -> np.ndarray:
        """bool [n_local]: which local crops are guided (the last `n_local_guided`)."""
        return np.arange(self.n_local) >= self.n_local_random

    def _guided_boxes(
        self, rng: np.random.Generator, boxes: np.ndarray, centers: np.ndarray, shape: tuple
    ) -> tuple[np.ndarray, np.ndarray]:
        """Re-positions `boxes` (sizes kept) around random lesion centres; -> (boxes, lesion)."""
        height, width = shape
        pick = rng.integers(0, len(centers), size=len(boxes))
        unit = rng.uniform(-1.0, 1.0, size=(len(boxes), 2))
        lesion = centers[pick].astype(np.float64)
        lesion[:, 0] = np.clip(lesion[:, 0], 0, height - 1)
        lesion[:, 1] = np.clip(lesion[:, 1], 0, width - 1)
        hw = boxes[:, 2:].astype(np.float64)
        # |offset| <= side / 2 - 2 keeps the centre inside the box before and after the
        # shift into the image (see tests/data/multicrop_test.py).
        reach = np.clip(np.minimum(self.guided_offset_px, hw / 2 - 2), 0, None)
        start = np.rint(lesion + unit * reach - hw / 2).astype(np.int64)
        limit = np.array([height, width]) - boxes[:, 2:]
        out = boxes.copy()
        out[:, :2] = np.clip(start, 0, limit)
        return out, lesion.astype(np.float32)

    def plan(self, element: dict[str, Any], rng: np.random.Generator) -> CropPlan:
        """Every random draw of one sample's multi-crop (no pixels are touched).

        Draws, in order: `transforms.sample_boxes`, the guided re-positioning (slices with
        calcium), uniforms [n, 7] (flip v, flip h, blur, noise, brightness, sigma, delta),
        then the noise-table offsets of the global and of the local crops.
        """
        hu = np.asarray(element["image"])
        if hu.ndim != 2:
            raise ValueError(f"record image must be [H, W], got {hu.shape}")
        shape = hu.shape
        centers = np.asarray(element.get("lesion_centers", np.zeros((0, 2))), np.float32)
        centers = centers.reshape(-1, 2)
        has_calcium = bool(element.get("has_calcium", False))
        guided = has_calcium and len(centers) > 0

        ng, nl = self.n_global, self.n_local
        scales = np.array([self.global_scale] * ng + [self.local_scale] * nl)
        boxes = transforms.sample_boxes(rng, ng + nl, *shape, scales, self.ratio)
        lesion = np.full((nl, 2), np.nan, dtype=np.float32)
        hit = np.zeros(nl, dtype=bool)
        if guided and self.n_local_guided:
            g = np.flatnonzero(self.guided_mask) + ng
            boxes[g], lesion[g - ng] = self._guided_boxes(rng, boxes[g], centers, shape)
            hit[g - ng] = True
        u = rng.random((ng + nl, 7))
        blur_p = np.full(ng + nl, self.blur_probs[2])
        blur_p[:ng] = self.blur_probs[1]
        blur_p[0] = self.blur_probs[0]
        flips = u[:, :2] < (self.vflip_prob, self.hflip_prob)
        lo, hi = self.blur_sigma
        sigma = np.where(u[:, 2] < blur_p, lo + (hi - lo) * u[:, 5], 0.0)
        delta = self.brightness_delta * (2.0 * u[:, 6] - 1.0)
        _, offset = transforms.hu_affine(self.hu_window)
        shift = offset + np.where(u[:, 4] < self.brightness_prob, delta, 0.0)
        stds = np.where(u[:, 3] < self.noise_prob, self.noise_std, 0.0)
        noise_offset = np.concatenate(
            [
                transforms.noise_offsets(rng, ng, self.global_size**2),
                transforms.noise_offsets(rng, nl, self.local_size**2),
            ]
        )
        fields: dict[str, Any] = {"guided_hit": hit, "has_calcium": np.bool_(has_calcium)}
        if self.debug:
            fields["boxes"] = boxes.astype(np.int32)
            fields["flips"] = flips
            fields["lesion"] = lesion
            fields["blur_sigma"] = sigma.astype(np.float32)
            for key in ("study", "slice"):
                if key in element:
                    fields[key] = element[key]
        return CropPlan(
            hu=hu,
            boxes=boxes.tolist(),
            flips=flips.tolist(),
            sigma=sigma.tolist(),
            radii=resample.blur_radii(sigma, self.blur_truncate).tolist(),
            shift=shift.tolist(),
            noise_std=stds.tolist(),
            noise_offset=noise_offset.tolist(),
            fields=fields,
        )

    def render(self, plans: Sequence[CropPlan], global_out: np.ndarray, local_out: np.ndarray):
        """Writes the crops of `plans` into crops-major batch arrays.

        Args:
          plans: B plans (`plan`).
          global_out: float32 or uint16 [n_global, B, G, G, 1] (`crop_codec`); written.
          local_out: same dtype, [n_local, B, L, L, 1]; written.
        """
        scale, _ = transforms.hu_affine(self.hu_window)
        table = transforms.noise_table()
        ng = self.n_global
        for b, p in enumerate(plans):
            # The clipped slice lives in a reused per-thread buffer; the rest of the
            # normalisation is the affine finish of every crop.
            image = transforms.clip_hu(
                p.hu, self.hu_window, resample.scratch_buffer("slice", p.hu.shape, np.float32)
            )
            for out, part in ((global_out, slice(0, ng)), (local_out, slice(ng, None))):
                resample.render_crops(
                    out[:, b, :, :, 0],
                    image,
                    p.boxes[part],
                    p.flips[part],
                    p.sigma[part],
                    p.radii[part],
                    scale,
                    p.shift[part],
                    p.noise_std[part],
                    p.noise_offset[part],
                    table,
                )

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        p = self.plan(element, rng)
        g = np.empty((self.n_global, 1, self.global_size, self.global_size, 1), np.float32)
        loc = np.empty((self.n_local, 1, self.local_size, self.local_size, 1), np.float32)
        self.render([p], g, loc)
        return {"global": g[:, 0], "local": loc[:, 0], **p.fields}


@dataclasses.dataclass(frozen=True)
class CropPlan:
    """The draws of one sample's multi-crop (`MultiCrop.plan`), global crops first.

    Attributes:
      hu: int16 [H, W] the record's slice (a view of the record bytes), HU.
      boxes: per crop ``[top, left, height, width]``, source pixels.
      flips: per crop ``[vertical, horizontal]``.
      sigma, radii: blur standard deviation (output pixels) and kernel radius; 0: none.
      shift: value added after the blur (normalisation offset + brightness delta).
      noise_std, noise_offset: noise standard deviation (0: none) and its table offset.
      fields: the per-sample outputs (``guided_hit``, ``has_calcium``, debug fields).
    """

    hu: np.ndarray
    boxes: list
    flips: list
    sigma: list
    radii: list
    shift: list
    noise_std: list
    noise_offset: list
    fields: dict


def crop_position(
    box: Sequence[int], size: int, flip: Sequence[bool], point: Sequence[float]
) -> tuple[float, float]:
    """Where a source pixel position lands in a resized (and flipped) crop.

    Args:
      box: (top, left, height, width) source pixels.
      size: crop output side, pixels.
      flip: (vertical, horizontal).
      point: (row, col) in source pixels.

    Returns:
      (row, col) in crop output pixels (inverse of the half-pixel sampling grid).
    """
    top, left, h, w = box
    r = (point[0] - top + 0.5) * size / h - 0.5
    c = (point[1] - left + 0.5) * size / w - 0.5
    if flip[0]:
        r = size - 1 - r
    if flip[1]:
        c = size - 1 - c
    return r, c
