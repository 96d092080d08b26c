"""Segmentation evaluation: per-artery IoU and Dice over a split (the paper's Table 5).

Pixel counts (intersection, predicted, true) per slice and class are computed on device by
a jitted, batch-sharded program (:func:`make_count_fn`), summed on the host over all
slices and over the slices with calcium, and turned into pooled IoU / Dice by
``eval.metrics.iou_dice_from_counts``. Slices come from ``data.pipeline.eval_dataset``
(every slice of the split once, in order; padding rows are dropped).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dinolg_jax.data import pipeline
from dinolg_jax.eval import metrics as metrics_lib
from dinolg_jax.models.unet import CLASS_NAMES
from dinolg_jax.runtime import mesh as mesh_lib


@functools.lru_cache(maxsize=16)
def make_count_fn(model: nn.Module, mesh: jax.sharding.Mesh, num_classes: int):
    """Jitted ``(params, images, labels) -> int32 [B, K, 3]`` (cached per model and mesh).

    Per slice and class: (intersection, predicted, true) pixel counts of the argmax
    prediction, the layout of ``eval.metrics.overlap_counts``.
    """

    def counts(params, images, labels):
        pred = jnp.argmax(model.apply({"params": params}, images, train=False), axis=-1)
        p = jax.nn.one_hot(pred, num_classes, dtype=jnp.int32)
        t = jax.nn.one_hot(labels.astype(jnp.int32), num_classes, dtype=jnp.int32)
        inter = jnp.sum(p * t, axis=(1, 2))
        return jnp.stack([inter, jnp.sum(p, axis=(1, 2)), jnp.sum(t, axis=(1, 2))], axis=-1)

    batch_sh = mesh_lib.batch_sharding(mesh)
    return jax.jit(counts, in_shardings=(None, batch_sh, batch_sh), out_shardings=batch_sh)


def per_artery(counts: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Pooled per-artery IoU/Dice of counts [N, K, 3]; None where undefined (0/0)."""
    scores = metrics_lib.iou_dice_from_counts(counts, average="pooled")
    out: dict[str, dict[str, float | None]] = {}
    for c in range(1, counts.shape[1]):
        iou, dice = float(scores["iou"][c]), float(scores["dice"][c])
        out[CLASS_NAMES[c]] = {
            "iou": iou if math.isfinite(iou) else None,
            "dice": dice if math.isfinite(dice) else None,
            "true_px": int(counts[:, c, 2].sum()),
            "pred_px": int(counts[:, c, 1].sum()),
        }
    return out


def evaluate(
    model: nn.Module,
    params: Any,
    manifest: Any,
    split: str,
    data: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    num_classes: int = len(CLASS_NAMES),
) -> dict[str, Any]:
    """Per-artery IoU and Dice over every slice of a split and over its calcified slices.

    Args:
      model, params: the segmenter.
      manifest: manifest (or path); split: e.g. ``"test"``.
      data: ``config.data`` (``batch_size`` is the global eval batch here).
      mesh: the mesh the batch is split over.

    Returns:
      {"all_slices": {artery: {"iou", "dice", "true_px", "pred_px"}}, "calcium_slices":
      same, "num_slices", "num_calcium_slices"}.
    """
    count_fn = make_count_fn(model, mesh, num_classes)
    totals = np.zeros((2, num_classes, 3), np.int64)  # [all slices, calcium slices]
    n = np.zeros(2, np.int64)
    for batch in pipeline.eval_dataset(manifest, split, data):
        arrays = mesh_lib.put_batch({k: batch[k] for k in ("image", "labels")}, mesh)
        local = local_rows(count_fn(params, arrays["image"], arrays["labels"]))
        valid = np.asarray(batch["valid"], bool)
        calc = valid & np.asarray(batch["has_calcium"], bool)
        totals[0] += local[valid].sum(0)
        totals[1] += local[calc].sum(0)
        n += (valid.sum(), calc.sum())
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        totals = np.asarray(multihost_utils.process_allgather(totals)).sum(0)
        n = np.asarray(multihost_utils.process_allgather(n)).sum(0)
    return {
        "all_slices": per_artery(totals[0][None]),
        "calcium_slices": per_artery(totals[1][None]),
        "num_slices": int(n[0]),
        "num_calcium_slices": int(n[1]),
    }


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order (as ``put_batch`` places them)."""
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])
