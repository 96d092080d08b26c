"""The dense probe: does each frozen patch token say whether its patch holds calcium?

The slice probe (``eval/probe.py``) asks one question per slice; at small scale a
lesion is one patch of 64 and its answer drowns in what the rest of the slice varies by
(the CPU ablation's probes sit at chance for every encoder, even one trained on the slice
labels). This probe asks it per patch, the way DINOv2 evaluates patch features with a
linear segmentation head, and so measures what pretraining did to the patch tokens:

1. Labels: a token's cell of the patch grid is calcium when any label pixel of the slice
   falls in it (``eval.attention.calcium_patch_mask``, at the record's own resolution).
   With ``token_pool`` q > 1 a cell is q x q patches, as the cached tokens are.
2. Rows: every token of the train split is a row ``float [D]``; when there are more than
   ``max_rows``, every calcium row is kept (up to half of ``max_rows``) and the others are
   drawn without replacement with ``seed``, so the fit is the same on every run.
3. Model: the slice probe's ``linear`` (standardised input, one logit), trained by
   ``probe.train_probe`` with balanced class weights.
4. Read-out on val and test: ``patch_roc_auc``, the ROC-AUC of the logit over all tokens
   of the split (1 = calcium patches rank above all others, 0.5 = chance), and
   ``slice_roc_auc``, the ROC-AUC of each slice's largest patch score against its
   ``has_calcium`` (a dense-label slice detector).

A measurement, not the gate: the integrated system still gates with the slice probe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain
import numpy as np

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import records
from dinolg_jax.eval.attention import calcium_patch_mask
from dinolg_jax.eval.metrics import roc_auc
from dinolg_jax.eval.probe import predict_scores, resolve_pos_weight, train_probe
from dinolg_jax.models.probes import build_probe


def split_calcium_cells(
    manifest: manifest_lib.Manifest, split: str, grid: tuple[int, int]
) -> np.ndarray:
    """bool [N, rows * cols]: the calcium cells of every record of ``split``, in record
    order (the order of ``features.extract_features``' rows)."""
    source = grain.sources.ArrayRecordDataSource(manifest.shard_paths(split))
    out = np.zeros((len(source), grid[0] * grid[1]), bool)
    for i in range(len(source)):
        out[i] = calcium_patch_mask(records.decode(source[i], ("labels",))["labels"], grid)[0]
    return out


def training_rows(cells: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Flat row indices (sorted int64) into ``cells.reshape(-1)`` for the fit.

    All rows when there are at most ``max_rows``; else every calcium row (a seeded draw of
    ``max_rows // 2`` of them when there are more) and a seeded draw of the others up to
    ``max_rows`` in all.
    """
    flat = np.asarray(cells, bool).reshape(-1)
    if max_rows <= 0 or flat.size <= max_rows:
        return np.arange(flat.size, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 0x9A7C])
    pos, neg = np.flatnonzero(flat), np.flatnonzero(~flat)
    if pos.size > max_rows // 2:
        pos = rng.choice(pos, max_rows // 2, replace=False)
    neg = rng.choice(neg, min(neg.size, max_rows - pos.size), replace=False)
    return np.sort(np.concatenate([pos, neg])).astype(np.int64)


def _scores(tokens: np.ndarray, model: Any, params: Any) -> np.ndarray:
    """float32 [N, T]: the probe's score of every token."""
    n, t, d = tokens.shape
    return predict_scores(model, params, tokens.reshape(n * t, d), batch_size=8192).reshape(n, t)


def _read(scores: np.ndarray, cells: np.ndarray, has_calcium: np.ndarray) -> dict[str, Any]:
    return {
        "patch_roc_auc": _defined(roc_auc(scores.reshape(-1), cells.reshape(-1))),
        "slice_roc_auc": _defined(roc_auc(scores.max(axis=1), np.asarray(has_calcium, bool))),
        "num_cells": int(cells.size),
        "num_calcium_cells": int(cells.sum()),
    }


def _defined(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def run_patch_probe(
    feats: Mapping[str, Mapping[str, np.ndarray]],
    cells: Mapping[str, np.ndarray],
    settings: Mapping[str, Any],
    seed: int,
    save_test_to: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fits the dense probe on ``train`` and reads it out on ``val`` and ``test``.

    Args:
      feats: per split (train, val, test) ``features.extract_features``' dict: ``tokens``
        [N, T, D] (memory-mapped is fine), ``has_calcium`` [N].
      cells: per split, bool [N, T] calcium cells (:func:`split_calcium_cells`).
      settings: ``config.patch_probe``: ``max_rows``, ``lr``, ``epochs``, ``batch_size``.
      seed: row draw, init and shuffling seed.
      save_test_to: a folder to write the test split's token scores (float32 [N, T],
        ``patch_test_scores.npy``) and calcium cells (bool [N, T], ``patch_test_cells.npy``)
        to, rows in record order; None writes nothing.

    Returns:
      ``{"val": {...}, "test": {...}, "train_rows", "train_calcium_rows", "pos_weight",
      "history"}``; each split's dict as in the module docstring (None when undefined).

    Raises:
      ValueError: token and cell counts differ, or no train cell holds calcium.
    """
    for split, f in feats.items():
        if f["tokens"].shape[:2] != cells[split].shape:
            raise ValueError(
                f"patch probe: {split} has tokens {f['tokens'].shape[:2]} but calcium cells "
                f"{cells[split].shape}; the token grid must match the label grid"
            )
    train = feats["train"]["tokens"]
    n, t, d = train.shape
    rows = training_rows(cells["train"], int(settings["max_rows"]), seed)
    x = np.asarray(train.reshape(n * t, d)[rows], np.float32)
    y = cells["train"].reshape(-1)[rows]
    if not y.any():
        raise ValueError("patch probe: no patch of the train split holds calcium")
    pos_weight = resolve_pos_weight("balanced", y)
    model = build_probe("linear")
    params, history = train_probe(
        model, x, y, lr=float(settings["lr"]), epochs=int(settings["epochs"]),
        batch_size=int(settings["batch_size"]), pos_weight=pos_weight, seed=int(seed),
    )  # fmt: skip
    scores = {s: _scores(feats[s]["tokens"], model, params) for s in ("val", "test")}
    out: dict[str, Any] = {
        s: _read(scores[s], cells[s], feats[s]["has_calcium"]) for s in ("val", "test")
    }
    if save_test_to is not None:  # the ablation's paired bootstrap reads them back
        np.save(Path(save_test_to) / "patch_test_scores.npy", scores["test"].astype(np.float32))
        np.save(Path(save_test_to) / "patch_test_cells.npy", np.asarray(cells["test"], bool))
    out.update(
        train_rows=int(rows.size),
        train_calcium_rows=int(y.sum()),
        pos_weight=pos_weight,
        history=history,
    )
    return out
