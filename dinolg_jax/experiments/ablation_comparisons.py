"""The ablation's paired comparisons: arm differences with 95 % intervals.

For every pair of arms (each pretraining arm against the control; among the pretraining
arms, the one with more guided crops against the one with fewer, e.g. DINO-LG against
DINO) and three read-outs of the test split, the mean over seeds of the difference and
its interval from ``eval.paired_bootstrap`` (seeds and test patients resampled)::

    probe_roc_auc         the slice probe: its test scores (``probe/test_scores.npy``)
                          against ``has_calcium``, one row per test slice
    patch_probe_roc_auc   the dense probe: every test patch token's score
                          (``probe/patch_test_scores.npy``) against its calcium cell
    attn_calcium_ratio    the attention ratio: the mean of the per-slice ratios
                          (``attention/summary.json``), one row per calcified test slice

Rows are the same for both arms and every seed (same split, same labels); a patient is a
study of the test split (``Manifest.study_range``), so its rows are resampled together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.eval.metrics import roc_auc
from dinolg_jax.eval.paired_bootstrap import paired_difference

METRICS = ("probe_roc_auc", "patch_probe_roc_auc", "attn_calcium_ratio")

# The study of every record of a split (moved to the data layer, where eval/ reads it too).
record_studies = manifest_lib.record_studies


def _mean(values: np.ndarray, labels: np.ndarray) -> float:
    del labels
    return float(np.mean(values)) if len(values) else float("nan")


def _rows(
    run: Path, metric: str, studies: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(values, labels, groups) of one arm-seed's read-out (None when it has none)."""
    probe, attention = run / "probe", run / "attention" / "summary.json"
    if metric == "probe_roc_auc" and (probe / "test_scores.npy").is_file():
        labels = np.load(probe / "test_has_calcium.npy")
        return np.load(probe / "test_scores.npy"), labels, studies
    if metric == "patch_probe_roc_auc" and (probe / "patch_test_scores.npy").is_file():
        scores = np.load(probe / "patch_test_scores.npy")
        cells = np.load(probe / "patch_test_cells.npy")
        groups = np.repeat(studies, scores.shape[1])
        return scores.reshape(-1), cells.reshape(-1), groups
    if metric == "attn_calcium_ratio" and attention.is_file():
        summary = json.loads(attention.read_text())
        rows = np.asarray(summary.get("slice_rows", []), np.int64)
        values = np.asarray(summary["per_slice"], np.float64)
        if len(rows) != len(values):  # written before slice_rows were kept
            return None
        return values, np.zeros(len(values)), studies[rows]
    return None


def pairs(arms: Sequence[str], guided: dict[str, int], control: str) -> list[tuple[str, str]]:
    """(a, b) pairs compared as a - b: each pretraining arm against the control, then
    every two pretraining arms with the more-guided one first."""
    out = [(a, control) for a in arms] if control else []
    ordered = sorted(arms, key=lambda a: (-guided[a], a))
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if guided[a] != guided[b]:
                out.append((a, b))
    return out


def compare(
    workdir: Path,
    seeds: Sequence[int],
    arm_pairs: Sequence[tuple[str, str]],
    studies: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """``{f"{a}_vs_{b}": {metric: {"diff", "ci95", "n_seeds", "n_groups", "n_boot"}}}``.

    Args:
      workdir: the ablation's folder (``seed<s>/<arm>/{probe,attention}``).
      seeds: the ablation's seeds (each arm of a pair must have every one).
      arm_pairs: from :func:`pairs`.
      studies: ``data.manifest.record_studies`` of the test split.
      n_boot, seed: the bootstrap's replicates and seed.
    """
    metrics: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "probe_roc_auc": roc_auc,
        "patch_probe_roc_auc": roc_auc,
        "attn_calcium_ratio": _mean,
    }
    out: dict[str, dict[str, Any]] = {}
    for a, b in arm_pairs:
        entry: dict[str, Any] = {}
        for metric, fn in metrics.items():
            rows_a = [_rows(workdir / f"seed{s}" / a, metric, studies) for s in seeds]
            rows_b = [_rows(workdir / f"seed{s}" / b, metric, studies) for s in seeds]
            if any(r is None for r in rows_a + rows_b):
                continue
            labels, groups = rows_a[0][1], rows_a[0][2]
            for r in rows_a + rows_b:
                if not (np.array_equal(r[1], labels) and np.array_equal(r[2], groups)):
                    raise ValueError(f"{a} vs {b}, {metric}: the arms' test rows differ")
            entry[metric] = paired_difference(
                [r[0] for r in rows_a], [r[0] for r in rows_b], labels, groups, fn,
                n_boot=n_boot, seed=seed,
            )  # fmt: skip
            d = entry[metric]
            log(f"[compare] {a} - {b}, {metric}: {d['diff']:+.3f} "
                f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")  # fmt: skip
        out[f"{a}_vs_{b}"] = entry
    return out
