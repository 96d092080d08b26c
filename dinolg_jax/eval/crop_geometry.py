"""How large a lesion looks in the crops the pretraining pipeline emits.

A ViT with patch ``p`` averages ``p * p`` pixels into a token: a lesion of a few pixels
in a crop is a few per cent of one token. This module measures, per lesion, its area in
the record (native resolution) and in every global and local crop of the pretraining
stream, so a regime can be compared with the paper's (224 px global crops of 512 px COCA
slices: median 8-19 px, 12-30 % of an 8 x 8 token).

A lesion is a 4-connected component of one vessel's label (`data.convert.lesion_centers`'
rule). The crops are the stream's own: `data.pipeline.pretrain_dataset` with
``debug=True`` gives each sample's crop boxes; each lesion of the sample's record is cut
with the same box. Its area in a crop is measured two ways:

* ``area_px``: its source pixels inside the box times the resize factor
  ``(S / h) * (S / w)`` (S the crop side, h x w the box): the area the resized crop
  gives it, partial lesions counted by their visible part;
* ``rendered_px``: pixels >= 0.5 of its binary mask resized like the image
  (``cv2.INTER_LINEAR``), what survives the interpolation (0 for a lesion the resize
  averages away).

Flips, blur and noise do not change either. Only lesions with at least one source pixel
inside a box count for that crop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import grain
import ml_collections
import numpy as np
from scipy import ndimage

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import pipeline, records

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
GROUPS = ("global", "local_random", "local_guided")


def lesion_masks(labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each vessel's 4-connected components of one slice as pixel lists.

    Args:
      labels: uint8 [H, W], 0 background, 1..4 vessels.

    Returns:
      One ``(rows, cols)`` int64 pair [n_k] per lesion, ordered by vessel, then raster.
    """
    out = []
    for v in np.unique(labels[labels > 0]):
        comp, n = ndimage.label(labels == v, structure=_FOUR_CONNECTED)
        for k in range(1, n + 1):
            out.append(np.nonzero(comp == k))
    return out


def crop_areas(
    lesion: tuple[np.ndarray, np.ndarray],
    shape: tuple[int, int],
    box: Sequence[int],
    size: int,
) -> tuple[float, int] | None:
    """One lesion's area in one resized crop.

    Args:
      lesion: ``(rows, cols)`` of its source pixels.
      shape: (H, W) of the source slice.
      box: (top, left, height, width) of the crop, source pixels.
      size: crop side after the resize, pixels.

    Returns:
      ``(area_px, rendered_px)`` (module docstring), or None when no pixel of the
      lesion lies inside the box.
    """
    top, left, h, w = (int(v) for v in box)
    rows, cols = lesion
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    n = int(np.count_nonzero(inside))
    if n == 0:
        return None
    mask = np.zeros(shape, np.float32)
    mask[rows, cols] = 1.0
    resized = cv2.resize(
        mask[top : top + h, left : left + w], (size, size), interpolation=cv2.INTER_LINEAR
    )
    return n * (size / h) * (size / w), int(np.count_nonzero(resized >= 0.5))


def summarise(values: Iterable[float], patch: int) -> dict[str, Any]:
    """``n``, median, p10, p90 of areas in pixels, and the same as a share of a token.

    Args:
      values: areas, pixels.
      patch: ViT patch side, pixels (a token covers ``patch ** 2`` pixels).
    """
    v = np.asarray(list(values), np.float64)
    if v.size == 0:
        return {"n": 0}
    q10, q50, q90 = np.percentile(v, [10, 50, 90])
    token = float(patch * patch)
    return {
        "n": int(v.size),
        "median_px": float(q50),
        "p10_px": float(q10),
        "p90_px": float(q90),
        "median_token_share": float(q50 / token),
        "p10_token_share": float(q10 / token),
        "p90_token_share": float(q90 / token),
        "share_le_1px": float(np.mean(v <= 1.0)),
    }


def _record_index(paths: Sequence[str]) -> tuple[Any, dict[tuple[str, int], int]]:
    source = grain.sources.ArrayRecordDataSource(list(paths))
    index = {}
    for i in range(len(source)):
        rec = records.decode(source[i], fields=())
        index[(str(rec["study"]), int(rec["slice"]))] = i
    return source, index


def record_level(
    manifest: manifest_lib.Manifest, split: str, patch: int, max_records: int = 0
) -> dict[str, Any]:
    """Lesion areas at native resolution over a split's calcified slices.

    Args:
      manifest: the converted dataset.
      split: manifest split.
      patch: ViT patch side, pixels.
      max_records: read at most this many records, evenly spaced (0: all).

    Returns:
      :func:`summarise` of the areas in pixels, plus ``median_mm2`` / ``p10_mm2`` /
      ``p90_mm2`` and ``pixel_mm`` (median spacing), ``slice_size`` (median side).
    """
    source = grain.sources.ArrayRecordDataSource(manifest.shard_paths(split))
    n = len(source)
    idx = (
        np.arange(n)
        if not max_records or max_records >= n
        else np.linspace(0, n - 1, max_records).astype(np.int64)
    )
    px, mm2, spacing, sides, n_slices, n_calcified = [], [], [], [], 0, 0
    for i in idx:
        rec = records.decode(source[int(i)], fields=("labels", "pixel_mm"))
        n_slices += 1
        spacing.append(float(np.mean(rec["pixel_mm"])))
        sides.append(rec["labels"].shape[0])
        if not rec["has_calcium"]:
            continue
        n_calcified += 1
        cell = float(np.prod(rec["pixel_mm"]))
        for rows, _ in lesion_masks(rec["labels"]):
            px.append(len(rows))
            mm2.append(len(rows) * cell)
    out = summarise(px, patch)
    if mm2:
        q10, q50, q90 = np.percentile(mm2, [10, 50, 90])
        out.update(median_mm2=float(q50), p10_mm2=float(q10), p90_mm2=float(q90))
    out.update(
        pixel_mm=float(np.median(spacing)),
        slice_size=int(np.median(sides)),
        n_slices=n_slices,
        calcified_slice_share=n_calcified / max(n_slices, 1),
    )
    return out


def crop_level(
    manifest: manifest_lib.Manifest,
    data: ml_collections.ConfigDict,
    patch: int,
    *,
    split: str = "pretrain",
    n_samples: int = 256,
) -> dict[str, Any]:
    """Lesion areas in the crops of the pretraining stream (the module docstring).

    Args:
      manifest: the converted dataset.
      data: the pretraining ``config.data`` (crop sizes, scales, counts, the stream's
        calcified share and seed): the pipeline is built from it as pretraining builds it.
      patch: ViT patch side, pixels.
      split: the pretraining split.
      n_samples: slices (each with all its crops) drawn from the stream, rounded up to
        whole batches.

    Returns:
      ``{group: {"area": summarise(area_px), "rendered": summarise(rendered_px)}}`` for
      ``global``, ``local_random`` and ``local_guided`` (local crops at a guided position
      that a lesion centred; guided positions on slices without calcium are random
      crops), plus ``n_samples``, ``n_calcified_samples``, ``global_size``,
      ``local_size``, ``patch``.
    """
    ds = pipeline.pretrain_dataset(
        manifest, data, split=split, process_index=0, process_count=1, debug=True
    )
    source, index = _record_index(manifest.shard_paths(split))
    ng = int(data.n_global)
    sizes = (int(data.global_size), int(data.local_size))
    area: dict[str, list[float]] = {g: [] for g in GROUPS}
    rendered: dict[str, list[int]] = {g: [] for g in GROUPS}
    seen = calcified = 0
    cache: dict[int, tuple[tuple[int, int], list]] = {}
    for batch in ds:
        for b in range(len(batch["has_calcium"])):
            seen += 1
            if not batch["has_calcium"][b]:
                continue
            calcified += 1
            i = index[(str(batch["study"][b]), int(batch["slice"][b]))]
            if i not in cache:
                labels = records.decode(source[i], fields=("labels",))["labels"]
                cache[i] = (labels.shape, lesion_masks(labels))
            shape, lesions = cache[i]
            for c, box in enumerate(batch["boxes"][b]):
                if c < ng:
                    group, size = "global", sizes[0]
                else:
                    hit = bool(batch["guided_hit"][b, c - ng])
                    group, size = ("local_guided" if hit else "local_random"), sizes[1]
                for lesion in lesions:
                    got = crop_areas(lesion, shape, box, size)
                    if got is not None:
                        area[group].append(got[0])
                        rendered[group].append(got[1])
        if seen >= n_samples:
            break
    out: dict[str, Any] = {
        g: {"area": summarise(area[g], patch), "rendered": summarise(rendered[g], patch)}
        for g in GROUPS
    }
    out.update(
        n_samples=seen,
        n_calcified_samples=calcified,
        global_size=sizes[0],
        local_size=sizes[1],
        patch=patch,
    )
    return out
