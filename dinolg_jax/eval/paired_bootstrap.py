"""Paired differences between two arms with a 95 % interval over seeds and patients.

An ablation compares arms ``a`` and ``b`` (e.g. DINO-LG and DINO) trained with the same
seeds and read out on the same test split. The quantity reported is the mean over
seeds of ``metric(a, seed) - metric(b, seed)``. Its interval comes from a two-level
bootstrap that resamples both sources of chance at once:

1. seeds, with replacement (``n_seeds`` draws; arm ``a`` and arm ``b`` of one seed stay
   paired, since they share the data order, the init and the split);
2. test patients, with replacement (one draw per replicate, used by every seed and both
   arms: the rows of a drawn patient enter with its multiplicity).

Each replicate's difference is the mean over the drawn seeds of the metric difference
on the drawn patients; the interval is the 2.5 and 97.5 percentiles of the replicates
(the percentile bootstrap). With one seed it is a patient-level bootstrap only.

The rows (slices, or patch tokens) are the same for every arm and seed: ``groups[i]``
is the patient of row ``i``. ``metric(values, labels)`` takes one arm-seed's row values
(scores) and the rows' labels, both already resampled, and returns a float (e.g.
``eval.metrics.roc_auc``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]


def group_rows(groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct groups (sorted) and, for each, the indices of its rows."""
    ids, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(ids)))[:-1]
    return ids, np.split(order, bounds)


def draw_rows(rng: np.random.Generator, rows: Sequence[np.ndarray]) -> np.ndarray:
    """One bootstrap draw of groups: ``len(rows)`` groups with replacement, their rows
    concatenated in draw order (a group drawn twice enters twice).

    Args:
      rng: the resampling's generator (one ``integers`` call per draw).
      rows: per group, the indices of its rows (:func:`group_rows`).

    Returns:
      int64 [M] row indices.
    """
    drawn = rng.integers(0, len(rows), len(rows))
    return np.concatenate([rows[g] for g in drawn])


def _check(values: Sequence[np.ndarray], n_rows: int, name: str) -> list[np.ndarray]:
    out = [np.asarray(v) for v in values]
    if not out:
        raise ValueError(f"{name}: no seeds")
    for v in out:
        if v.shape[0] != n_rows:
            raise ValueError(f"{name}: {v.shape[0]} rows, the labels have {n_rows}")
    return out


def paired_difference(
    a: Sequence[Any],
    b: Sequence[Any],
    labels: Any,
    groups: Any,
    metric: Metric,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean over seeds of ``metric(a[s]) - metric(b[s])`` and its 95 % bootstrap interval.

    Args:
      a, b: per seed (same order in both), the arm's row values, each [N].
      labels: [N] the rows' labels (shared by every arm and seed).
      groups: [N] the rows' patient ids (any hashable numpy dtype).
      metric: ``metric(values [M], labels [M]) -> float`` on resampled rows.
      n_boot: bootstrap replicates.
      seed: the resampling's seed (same inputs and seed -> same interval).

    Returns:
      ``{"diff", "ci95": [lo, hi], "n_seeds", "n_groups", "n_boot"}``; ``diff`` is the
      point estimate on all patients. Replicates where the metric is undefined (NaN,
      e.g. a resample with one class) are dropped; ``n_boot`` counts those kept.

    Raises:
      ValueError: a and b differ in seed count, or a row count differs from the labels'.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    n = labels.shape[0]
    if groups.shape[0] != n:
        raise ValueError(f"groups: {groups.shape[0]} rows, the labels have {n}")
    a, b = _check(a, n, "a"), _check(b, n, "b")
    if len(a) != len(b):
        raise ValueError(f"a has {len(a)} seeds, b has {len(b)}: the arms must be paired")
    n_seeds = len(a)
    per_seed = np.array([metric(x, labels) - metric(y, labels) for x, y in zip(a, b, strict=True)])
    ids, rows = group_rows(groups)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(int(n_boot)):
        seeds = rng.integers(0, n_seeds, n_seeds)
        idx = draw_rows(rng, rows)
        y = labels[idx]
        diffs = [metric(a[s][idx], y) - metric(b[s][idx], y) for s in seeds]
        value = float(np.mean(diffs))
        if np.isfinite(value):
            reps.append(value)
    lo, hi = np.percentile(reps, [2.5, 97.5]) if reps else (np.nan, np.nan)
    return {
        "diff": float(np.mean(per_seed)),
        "ci95": [float(lo), float(hi)],
        "n_seeds": n_seeds,
        "n_groups": len(ids),
        "n_boot": len(reps),
    }
