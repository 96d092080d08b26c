"""A yardstick for the frozen-feature probe: the same linear probe on each slice's HU histogram.

The calcified-slice probe reads frozen encoder features. Whether those features carry
calcium is only meaningful against what the pixels alone give away: this baseline counts
each slice's pixels in fixed Hounsfield-unit bins (edges :data:`HU_EDGES`, which include
the Agatston thresholds 130 / 200 / 300 / 400 HU), takes ``log(1 + count)`` per bin, and
trains the project's linear probe (:func:`eval.probe.train_probe`, same optimiser, same
class weighting, standardised input) on the train split. Its val / test ROC-AUC says how
much of the slice label a global brightness statistic explains. An encoder whose probe
stays below it has not learned (or has normalised away) what a 13-bin histogram sees; a
phantom where it is high has a brightness shortcut at that image size (at 64 px the
phantom's lesions are 1-7 pixels of 130-200 HU, a band its bone and aorta do not fill).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import records
from dinolg_jax.data.shards import NamedShardSource
from dinolg_jax.eval import metrics as metrics_lib
from dinolg_jax.eval import probe as probe_lib
from dinolg_jax.models.probes import build_probe

# Bin edges in HU: bin k holds e_k <= HU < e_{k+1}; values below the first edge count in
# the first bin, values at or above the last edge in the last.
HU_EDGES = (-1000, -500, -100, 0, 50, 100, 130, 200, 300, 400, 600, 800, 1200, 3000)


def hu_histogram(images_hu: np.ndarray, edges: tuple[int, ...] = HU_EDGES) -> np.ndarray:
    """Per-slice ``log(1 + pixel count)`` in each HU bin.

    Args:
      images_hu: [N, H, W] Hounsfield units (any integer or float dtype).
      edges: increasing bin edges in HU (``len(edges) - 1`` bins).

    Returns:
      float32 [N, len(edges) - 1].
    """
    images_hu = np.asarray(images_hu)
    if images_hu.ndim != 3:
        raise ValueError(f"images_hu must be [N, H, W], got shape {images_hu.shape}")
    n_bins = len(edges) - 1
    idx = np.clip(np.searchsorted(np.asarray(edges), images_hu, side="right") - 1, 0, n_bins - 1)
    counts = (
        np.stack([np.bincount(i.ravel(), minlength=n_bins) for i in idx])
        if len(idx)
        else (np.zeros((0, n_bins), np.int64))
    )
    return np.log1p(counts).astype(np.float32)


def split_histograms(
    manifest: str | os.PathLike, split: str, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """``(hu_histogram of every slice of split [N, B], has_calcium bool [N])``, record order."""
    m = manifest_lib.load(manifest)
    source = NamedShardSource(m.shard_paths(split))
    feats, labels = [], []
    for lo in range(0, len(source), chunk):
        recs = [records.decode(r, fields=("image",)) for r in
                source.__getitems__(list(range(lo, min(lo + chunk, len(source)))))]  # fmt: skip
        feats.append(hu_histogram(np.stack([r["image"] for r in recs])))
        labels.extend(bool(r["has_calcium"]) for r in recs)
    if not feats:
        raise ValueError(f"split {split!r} has no records")
    return np.concatenate(feats), np.asarray(labels, bool)


def hu_histogram_baseline(
    manifest: str | os.PathLike,
    optim: Any,
    seed: int = 0,
    *,
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> dict[str, Any]:
    """Trains the linear probe on HU histograms of ``splits[0]`` and scores the others.

    Args:
      manifest: a converted dataset's ``manifest.json``.
      optim: the probe's optimiser settings (``lr``, ``epochs``, ``batch_size``,
        ``weight_decay``), e.g. ``config.probe.optim``.
      seed: probe init and shuffling seed.

    Returns:
      ``{"hu_edges": [...], "<split>_roc_auc": float, "<split>_slices": int,
      "<split>_calcified": int}`` for the scored splits.
    """
    x_tr, y_tr = split_histograms(manifest, splits[0])
    model = build_probe("linear")
    params, _ = probe_lib.train_probe(
        model, x_tr, y_tr,
        lr=float(optim.lr), epochs=int(optim.epochs), batch_size=int(optim.batch_size),
        pos_weight=probe_lib.resolve_pos_weight("balanced", y_tr), seed=int(seed),
        weight_decay=float(optim.weight_decay),
    )  # fmt: skip
    out: dict[str, Any] = {"hu_edges": list(HU_EDGES)}
    for split in splits[1:]:
        x, y = split_histograms(manifest, split)
        scores = probe_lib.predict_scores(model, params, x)
        auc = metrics_lib.roc_auc(scores, y)
        out[f"{split}_roc_auc"] = float(auc) if np.isfinite(auc) else None
        out[f"{split}_slices"], out[f"{split}_calcified"] = len(y), int(y.sum())
    return out
