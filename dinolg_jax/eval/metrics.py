"""Evaluation metrics for the slice probe, the segmenters and the calcium scores (numpy/scipy).

Conventions used throughout:
    * Undefined metrics (a 0/0 ratio, an AUC without both classes, a correlation of a
      constant) return ``zero_division`` where the function takes it, NaN otherwise; they
      never raise. Malformed input (shape mismatch, non-binary labels, labels outside
      ``0..num_classes-1``, non-finite values, unknown options) raises ``ValueError``.
    * Binary predictions are positive when ``score >= threshold``.
    * Confusion matrices have the true class on rows and the prediction on columns.
    * Ranks are average ranks (ties share the mean of the ranks they span), 1-based.
    * Intervals are 95 % percentile-bootstrap intervals over patients (:func:`bootstrap`):
      ``BOOTSTRAP_RESAMPLES`` = 1000 replicates, seed ``BOOTSTRAP_SEED`` = 0, every row of
      a drawn patient resampled together; printed as ``"0.82 [0.74, 0.88]"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from dinolg_jax.eval.paired_bootstrap import draw_rows, group_rows
from dinolg_jax.scoring.agatston import RISK_SCHEMES, VESSELS, category_index

# ---------------------------------------------------------------------------
# Input checks.


def _vector(x: Any, name: str, *, finite: bool = True) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values")
    return arr


def _binary(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != bool:
        arr = _vector(arr, name) if arr.ndim == 1 else arr
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must be binary (0/1 or bool)")
    return arr.astype(bool)


def _same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} shapes differ: {a.shape} vs {b.shape}")


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked scores and labels of a binary problem: (float64 [N], bool [N]).

    Raises:
        ValueError: for scores that are not 1D, numeric and finite, labels that are not
            binary, or a shape mismatch (checked in that order).
    """
    s = _vector(scores, "scores").astype(np.float64)
    y = _binary(labels, "labels")
    _same_shape(s, y, "scores/labels")
    return s, y


def _ratio(num: float, den: float, zero_division: float) -> float:
    return float(num) / float(den) if den else float(zero_division)


def _classes(x: Any, name: str, num_classes: int) -> np.ndarray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}, got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


# ---------------------------------------------------------------------------
# Binary classification (the calcified-slice probe, per-artery presence).


@dataclass(frozen=True)
class BinaryCounts:
    """Confusion counts of a binary decision."""

    tp: int
    tn: int
    fp: int
    fn: int

    def metrics(self, zero_division: float = math.nan) -> dict[str, float]:
        """Counts plus precision, recall (sensitivity), specificity, F1 and accuracy.

        F1 = 2 TP / (2 TP + FP + FN). A ratio whose denominator is 0 is ``zero_division``.
        """
        tp, tn, fp, fn = self.tp, self.tn, self.fp, self.fn
        return {
            "tp": tp,
            "tn": tn,
            "fp": fp,
            "fn": fn,
            "precision": _ratio(tp, tp + fp, zero_division),
            "recall": _ratio(tp, tp + fn, zero_division),
            "specificity": _ratio(tn, tn + fp, zero_division),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn, zero_division),
            "accuracy": _ratio(tp + tn, tp + tn + fp + fn, zero_division),
        }


def binary_counts(y_true: Any, y_pred: Any) -> BinaryCounts:
    """TP/TN/FP/FN of binary predictions.

    Args:
        y_true: [N] (or any shape) 0/1 or bool ground truth.
        y_pred: same shape, 0/1 or bool predictions.
    """
    t = _binary(y_true, "y_true")
    p = _binary(y_pred, "y_pred")
    _same_shape(t, p, "y_true/y_pred")
    tp = int(np.count_nonzero(t & p))
    fp = int(np.count_nonzero(~t & p))
    fn = int(np.count_nonzero(t & ~p))
    return BinaryCounts(tp=tp, tn=int(t.size - tp - fp - fn), fp=fp, fn=fn)


def binary_metrics(y_true: Any, y_pred: Any, *, zero_division: float = math.nan) -> dict:
    """``binary_counts(y_true, y_pred).metrics(zero_division)``."""
    return binary_counts(y_true, y_pred).metrics(zero_division)


def rank_average(x: Any) -> np.ndarray:
    """Average ranks (1-based, ties get the mean rank of their run) of a 1D array.

    ``scipy.stats.rankdata(x, method="average")`` after the input checks.

    Returns:
        float64 [N].
    """
    return stats.rankdata(_vector(x, "x"), method="average").astype(np.float64)


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve by the Mann-Whitney rank statistic.

    Equals P(score_pos > score_neg) + 0.5 P(score_pos == score_neg) over all
    positive/negative pairs. NaN unless both classes are present.

    Args:
        scores: [N] real scores, higher = more likely positive.
        labels: [N] 0/1 or bool.
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rank_average(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct score used as threshold (``score >= t`` positive).

    Returns:
        (fpr [T+1], tpr [T+1], thresholds [T+1]) with thresholds descending, starting at
        +inf (nothing positive, the point (0, 0)).
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_curve needs both positive and negative labels")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tps = np.cumsum(y_sorted)
    fps = np.cumsum(~y_sorted)
    last = np.concatenate((s_sorted[1:] != s_sorted[:-1], [True]))  # end of each tie run
    tpr = np.concatenate(([0.0], tps[last] / n_pos))
    fpr = np.concatenate(([0.0], fps[last] / n_neg))
    thresholds = np.concatenate(([np.inf], s_sorted[last]))
    return fpr, tpr, thresholds


def threshold_for_recall(scores: Any, labels: Any, target: float = 0.95) -> float:
    """Largest threshold t whose recall (positives with ``score >= t``) is >= ``target``.

    Used to fix the probe's decision threshold on the validation split: a missed
    calcified slice is never segmented, so recall is the constraint.

    Args:
        scores: [N] real scores.
        labels: [N] 0/1 or bool; at least one positive.
        target: required recall in (0, 1].

    Returns:
        The threshold, one of the positive scores.
    """
    s, y = _scores_labels(scores, labels)
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"target recall must be in (0, 1], got {target!r}")
    pos = np.sort(s[y])[::-1]
    if pos.size == 0:
        raise ValueError("threshold_for_recall needs at least one positive label")
    # Keeping the top k positives gives recall k / n (ties only add more); the smallest k
    # that reaches the target fixes the threshold at the k-th largest positive score.
    k = int(np.argmax(np.arange(1, pos.size + 1) / pos.size >= float(target)))
    return float(pos[k])


# ---------------------------------------------------------------------------
# Segmentation overlap (per class, over slices).


def overlap_counts(pred: Any, target: Any, num_classes: int = 5) -> np.ndarray:
    """Per-slice, per-class (intersection, predicted, true) pixel counts.

    Accumulate these over batches (concatenate on axis 0) and pass them to
    ``iou_dice_from_counts``; nothing else of the masks needs keeping.

    Args:
        pred: [N, H, W] (or [H, W]) integer class map.
        target: same shape, integer class map.
        num_classes: number of classes C (class 0 is background).

    Returns:
        int64 [N, C, 3].
    """
    p = _classes(pred, "pred", num_classes)
    t = _classes(target, "target", num_classes)
    _same_shape(p, t, "pred/target")
    if p.ndim == 2:
        p, t = p[None], t[None]
    n = p.shape[0]
    p = p.reshape(n, -1)
    t = t.reshape(n, -1)
    offset = (np.arange(n) * num_classes)[:, None]
    size = n * num_classes
    pred_c = np.bincount((p + offset).ravel(), minlength=size).reshape(n, num_classes)
    true_c = np.bincount((t + offset).ravel(), minlength=size).reshape(n, num_classes)
    match = p == t
    inter = np.bincount((t + offset)[match], minlength=size).reshape(n, num_classes)
    return np.stack([inter, pred_c, true_c], axis=-1).astype(np.int64)


def iou_dice_from_counts(
    counts: Any,
    *,
    only_present: bool = False,
    average: str = "pooled",
    empty_score: float = 1.0,
    zero_division: float = math.nan,
) -> dict[str, np.ndarray]:
    """Per-class IoU and Dice from ``overlap_counts``.

    Args:
        counts: int [N, C, 3] (intersection, predicted, true) per slice and class.
        only_present: restrict each class to the slices where it is present in the ground
            truth ("over slices with calcium"); otherwise all N slices.
        average: "pooled" sums intersections and unions over the slices first (dataset
            level); "per_slice" averages each slice's score.
        empty_score: per-slice score of a slice where the class is in neither mask.
        zero_division: value of a pooled 0/0 and of a class with no slice to average.

    Returns:
        {"iou": float [C], "dice": float [C], "slices": int [C]} (slices = number used).
    """
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim != 3 or c.shape[-1] != 3:
        raise ValueError(f"counts must be [N, C, 3], got shape {c.shape}")
    if average not in ("pooled", "per_slice"):
        raise ValueError(f"average must be 'pooled' or 'per_slice', got {average!r}")
    inter, pred_n, true_n = c[..., 0], c[..., 1], c[..., 2]
    use = true_n > 0 if only_present else np.ones(inter.shape, dtype=bool)
    union = pred_n + true_n - inter
    total = pred_n + true_n
    n_used = use.sum(axis=0)
    if average == "pooled":
        i_sum = np.where(use, inter, 0).sum(axis=0)
        u_sum = np.where(use, union, 0).sum(axis=0)
        t_sum = np.where(use, total, 0).sum(axis=0)
        iou = np.array([_ratio(a, b, zero_division) for a, b in zip(i_sum, u_sum, strict=True)])
        dice = np.array(
            [_ratio(2 * a, b, zero_division) for a, b in zip(i_sum, t_sum, strict=True)]
        )
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            iou_s = np.where(union > 0, inter / np.maximum(union, 1), empty_score)
            dice_s = np.where(total > 0, 2 * inter / np.maximum(total, 1), empty_score)
        iou_sum = np.where(use, iou_s, 0.0).sum(axis=0)
        dice_sum = np.where(use, dice_s, 0.0).sum(axis=0)
        iou = np.where(n_used > 0, iou_sum / np.maximum(n_used, 1), zero_division)
        dice = np.where(n_used > 0, dice_sum / np.maximum(n_used, 1), zero_division)
    return {"iou": iou.astype(np.float64), "dice": dice.astype(np.float64), "slices": n_used}


def iou_dice(pred: Any, target: Any, num_classes: int = 5, **kwargs: Any) -> dict:
    """``iou_dice_from_counts(overlap_counts(pred, target, num_classes), **kwargs)``."""
    return iou_dice_from_counts(overlap_counts(pred, target, num_classes), **kwargs)


# ---------------------------------------------------------------------------
# Per-artery calcium presence per patient (the paper's Table 6).


def presence_from_scores(
    per_vessel: Sequence[Mapping[str, float]], vessels: Sequence[str] = VESSELS
) -> np.ndarray:
    """bool [P, V]: vessel has calcium (score > 0), from per-patient per-vessel scores."""
    return np.array([[float(p[v]) > 0 for v in vessels] for p in per_vessel], dtype=bool)


def presence_metrics(
    true_present: Any,
    pred_present: Any,
    vessels: Sequence[str] = VESSELS,
    *,
    zero_division: float = math.nan,
) -> dict[str, dict[str, float]]:
    """Per-artery precision / recall / F1 (and counts, accuracy) of calcium presence.

    Args:
        true_present: bool [P, V], ground-truth presence per patient and vessel.
        pred_present: bool [P, V], predicted presence.
        vessels: the V vessel names.
        zero_division: value of a 0/0 ratio.

    Returns:
        {vessel: metrics} plus "mean": the unweighted mean of each ratio over the vessels
        (NaN-ignoring; NaN when every vessel is undefined).
    """
    t = _binary(true_present, "true_present")
    p = _binary(pred_present, "pred_present")
    _same_shape(t, p, "true_present/pred_present")
    if t.ndim != 2 or t.shape[1] != len(vessels):
        raise ValueError(f"presence must be [P, {len(vessels)}], got {t.shape}")
    out = {v: binary_counts(t[:, k], p[:, k]).metrics(zero_division) for k, v in enumerate(vessels)}
    mean = {}
    for key in ("precision", "recall", "specificity", "f1", "accuracy"):
        vals = np.array([out[v][key] for v in vessels], dtype=np.float64)
        mean[key] = float(np.nanmean(vals)) if np.any(~np.isnan(vals)) else math.nan
    out["mean"] = mean
    return out


# ---------------------------------------------------------------------------
# Multi-class agreement (risk categories).


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """int64 [C, C] counts, true class on rows, predicted class on columns."""
    t = _classes(y_true, "y_true", num_classes).ravel()
    p = _classes(y_pred, "y_pred", num_classes).ravel()
    _same_shape(t, p, "y_true/y_pred")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def risk_confusion(true_scores: Any, pred_scores: Any, scheme: str = "paper4") -> np.ndarray:
    """Confusion matrix [C, C] of the risk categories of Agatston scores (true on rows)."""
    t = _vector(true_scores, "true_scores")
    p = _vector(pred_scores, "pred_scores")
    _same_shape(t, p, "true_scores/pred_scores")
    if scheme not in RISK_SCHEMES:
        raise ValueError(f"unknown risk scheme {scheme!r}; known: {sorted(RISK_SCHEMES)}")
    ti = [category_index(float(s), scheme) for s in t]
    pi = [category_index(float(s), scheme) for s in p]
    return confusion_matrix(
        np.array(ti, np.int64), np.array(pi, np.int64), len(RISK_SCHEMES[scheme])
    )


def accuracy_from_confusion(cm: Any) -> float:
    """Trace / total of a confusion matrix; NaN when it is empty."""
    cm = np.asarray(cm, dtype=np.float64)
    return _ratio(np.trace(cm), cm.sum(), math.nan)


def kappa_from_confusion(cm: Any, weights: str | None = None) -> float:
    """Cohen's kappa of a [C, C] confusion matrix.

    kappa = 1 - sum(W * O) / sum(W * E), O the observed proportions, E = outer(row
    marginals, column marginals), and disagreement weights W: unweighted 1 - I, "linear"
    |i - j| / (C - 1), "quadratic" ((i - j) / (C - 1))^2. NaN when sum(W * E) = 0
    (e.g. both raters use one single category).
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 2:
        raise ValueError(f"confusion matrix must be [C, C] with C >= 2, got {cm.shape}")
    c = cm.shape[0]
    i, j = np.indices((c, c))
    if weights is None:
        w = (i != j).astype(np.float64)
    elif weights == "linear":
        w = np.abs(i - j) / (c - 1)
    elif weights == "quadratic":
        w = ((i - j) / (c - 1)) ** 2
    else:
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    n = cm.sum()
    if n == 0:
        return math.nan
    obs = cm / n
    exp = np.outer(obs.sum(axis=1), obs.sum(axis=0))
    den = float((w * exp).sum())
    return 1.0 - float((w * obs).sum()) / den if den > 0 else math.nan


def cohen_kappa(y_true: Any, y_pred: Any, num_classes: int, *, weights: str | None = None) -> float:
    """Cohen's kappa of two integer ratings in 0..num_classes-1 (see kappa_from_confusion)."""
    return kappa_from_confusion(confusion_matrix(y_true, y_pred, num_classes), weights)


# ---------------------------------------------------------------------------
# Agreement of continuous scores.


_ICC_KINDS = {"2,1": "2,1", "agreement": "2,1", "3,1": "3,1", "consistency": "3,1"}


def icc(ratings: Any, kind: str = "2,1") -> float:
    """Intraclass correlation of n subjects each rated by the same k raters (Shrout-Fleiss).

    From the two-way ANOVA mean squares MSR (subjects), MSC (raters), MSE (residual):
        "2,1" (alias "agreement"): two-way random effects, absolute agreement, single
            rating: (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n). A constant bias
            between raters lowers it; this is the default for comparing automatic and
            reference Agatston scores.
        "3,1" (alias "consistency"): two-way mixed effects, consistency, single rating:
            (MSR - MSE) / (MSR + (k - 1) MSE). Ignores a constant bias.

    Args:
        ratings: [n, k] with n >= 2 subjects and k >= 2 raters, e.g. columns (reference,
            prediction).
        kind: see above.

    Returns:
        ICC; NaN when the denominator is 0 (all ratings identical).
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"ratings must be [n >= 2, k >= 2], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("ratings has non-finite values")
    if kind not in _ICC_KINDS:
        raise ValueError(f"kind must be one of {sorted(_ICC_KINDS)}, got {kind!r}")
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * np.sum((x.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((x.mean(axis=0) - grand) ** 2)
    ss_err = np.sum((x - grand) ** 2) - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    if _ICC_KINDS[kind] == "2,1":
        den = msr + (k - 1) * mse + k * (msc - mse) / n
    else:
        den = msr + (k - 1) * mse
    return float((msr - mse) / den) if den != 0 else math.nan


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Checked float64 pair, or None when a correlation is undefined (n < 2, a constant)."""
    a = _vector(x, "x").astype(np.float64)
    b = _vector(y, "y").astype(np.float64)
    _same_shape(a, b, "x/y")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return a, b


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation (``scipy.stats.pearsonr``); NaN when either input is constant
    or has < 2 values."""
    pair = _pair(x, y)
    return math.nan if pair is None else float(stats.pearsonr(*pair).statistic)


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``: Pearson of the average ranks,
    ties handled); NaN when either input is constant or has < 2 values."""
    pair = _pair(x, y)
    return math.nan if pair is None else float(stats.spearmanr(*pair).statistic)


@dataclass(frozen=True)
class BlandAltman:
    """Bland-Altman agreement of two measurement methods (diff = a - b).

    Attributes:
        bias: mean difference.
        sd: sample standard deviation of the differences (ddof=1).
        lower: bias - 1.96 sd (lower limit of agreement).
        upper: bias + 1.96 sd.
        means: [n] per-subject means (a + b) / 2, the plot's x axis.
        diffs: [n] per-subject differences a - b, the plot's y axis.
    """

    bias: float
    sd: float
    lower: float
    upper: float
    means: np.ndarray
    diffs: np.ndarray

    def summary(self) -> dict[str, float]:
        """JSON-friendly scalars."""
        return {
            "bias": self.bias,
            "sd": self.sd,
            "loa_lower": self.lower,
            "loa_upper": self.upper,
            "n": int(self.diffs.size),
        }


def bland_altman(a: Any, b: Any, *, z: float = 1.96) -> BlandAltman:
    """Bland-Altman statistics of paired measurements a (e.g. predicted) and b (reference).

    Args:
        a: [n] measurements of method A.
        b: [n] measurements of method B, n >= 2.
        z: half-width of the limits of agreement in standard deviations.
    """
    x = _vector(a, "a").astype(np.float64)
    y = _vector(b, "b").astype(np.float64)
    _same_shape(x, y, "a/b")
    if x.size < 2:
        raise ValueError("bland_altman needs at least 2 pairs")
    diffs = x - y
    bias = float(diffs.mean())
    sd = float(diffs.std(ddof=1))
    return BlandAltman(bias, sd, bias - z * sd, bias + z * sd, (x + y) / 2.0, diffs)


# ---------------------------------------------------------------------------
# 95 % bootstrap intervals over patients.

BOOTSTRAP_RESAMPLES = 1000  # replicates drawn by default
BOOTSTRAP_SEED = 0  # the resampling's default seed
Statistic = Callable[..., Mapping[str, float]]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap interval over patients.

    Attributes:
        value: the statistic on all patients.
        lo, hi: the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the
            replicates (NaN when no replicate is defined).
        level: the interval's coverage, 0.95.
        n_boot: replicates kept (those where the statistic is defined).
        n_groups: patients resampled.
    """

    value: float
    lo: float
    hi: float
    level: float
    n_boot: int
    n_groups: int

    def summary(self) -> dict[str, Any]:
        """JSON-friendly: ``{"value", "ci95": [lo, hi], "n_boot", "n_groups"}`` (NaN -> None)."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "value": num(self.value),
            "ci95": [num(self.lo), num(self.hi)],
            "n_boot": self.n_boot,
            "n_groups": self.n_groups,
        }

    def format(self, digits: int = 2) -> str:
        """``"0.82 [0.74, 0.88]"`` (see :func:`format_interval`)."""
        return format_interval(self.value, (self.lo, self.hi), digits)


def format_interval(value: Any, ci: Sequence[Any] | None, digits: int = 2) -> str:
    """A value and its interval as ``"0.82 [0.74, 0.88]"``.

    Args:
        value: the point estimate (None or NaN: ``"n/a"``).
        ci: ``(lo, hi)``, e.g. ``Interval.summary()["ci95"]``; None or an undefined bound
            gives ``"0.82 [n/a]"``.
        digits: decimals of all three numbers.
    """

    def num(x: Any) -> str | None:
        return None if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"

    v = num(value)
    if v is None:
        return "n/a"
    lo, hi = (None, None) if ci is None else (num(ci[0]), num(ci[1]))
    return f"{v} [n/a]" if lo is None or hi is None else f"{v} [{lo}, {hi}]"


def _rows_of(arrays: Sequence[Any], groups: Any) -> tuple[list[np.ndarray], np.ndarray]:
    arrs = [np.asarray(a) for a in arrays]
    if not arrs:
        raise ValueError("bootstrap needs at least one array")
    n = arrs[0].shape[0] if arrs[0].ndim else -1
    for a in arrs:
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"bootstrap arrays need the same number of rows, got {a.shape}")
    g = np.arange(n) if groups is None else np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must be [{n}] (one patient id per row), got {g.shape}")
    return arrs, g


def bootstrap_replicates(
    statistic: Statistic,
    arrays: Sequence[Any],
    *,
    groups: Any = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, np.ndarray]:
    """The statistic's bootstrap replicates, patients resampled with replacement.

    Each replicate draws as many patients as there are, with replacement
    (``eval.paired_bootstrap.draw_rows``: every row of a drawn patient enters, as often as
    the patient is drawn), and evaluates ``statistic`` on those rows of every array.

    Args:
        statistic: ``statistic(*rows) -> {name: float}``, the arrays' resampled rows in.
        arrays: arrays with the same first dimension N (rows: slices, or patients).
        groups: [N] patient id of each row; None: each row is its own patient.
        n_boot: replicates.
        seed: the resampling's seed (same inputs and seed -> same replicates).

    Returns:
        {name: float64 [n_boot]}, NaN where the statistic is undefined on a replicate.
    """
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    arrs, g = _rows_of(arrays, groups)
    _, rows = group_rows(g)
    rng = np.random.default_rng(seed)
    reps: dict[str, list[float]] = {}
    for _ in range(int(n_boot)):
        idx = draw_rows(rng, rows) if rows else np.zeros(0, np.int64)
        for name, value in statistic(*(a[idx] for a in arrs)).items():
            reps.setdefault(name, []).append(float(value))
    return {name: np.asarray(v, np.float64) for name, v in reps.items()}


def bootstrap(
    statistic: Statistic,
    arrays: Sequence[Any],
    *,
    groups: Any = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> dict[str, Interval]:
    """Each named value of ``statistic`` with its percentile-bootstrap interval over patients.

    Arguments as :func:`bootstrap_replicates`; ``level`` is the coverage (0.95: the 2.5
    and 97.5 percentiles, numpy's linear interpolation). Replicates where a value is
    undefined (NaN, e.g. an AUC of a resample with one class) are dropped from its
    interval; ``Interval.n_boot`` counts those kept.

    Returns:
        {name: Interval} in the statistic's key order.
    """
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    arrs, g = _rows_of(arrays, groups)
    point = statistic(*arrs)
    reps = bootstrap_replicates(statistic, arrs, groups=g, n_boot=n_boot, seed=seed)
    tail = 50.0 * (1.0 - float(level))
    out = {}
    for name, value in point.items():
        r = reps[name][np.isfinite(reps[name])]
        lo, hi = np.percentile(r, [tail, 100.0 - tail]) if r.size else (math.nan, math.nan)
        n_groups = len(np.unique(g))
        out[name] = Interval(float(value), float(lo), float(hi), float(level), r.size, n_groups)
    return out


def binary_intervals(
    scores: Any,
    labels: Any,
    threshold: float,
    *,
    groups: Any = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Interval]:
    """ROC-AUC and F1 (at ``score >= threshold``) of a binary read-out, with intervals.

    Args:
        scores: [N] real scores (e.g. the probe's per-slice scores).
        labels: [N] 0/1 or bool.
        threshold: the decision threshold of F1.
        groups: [N] patient of each row (slices of a patient are resampled together);
            None: rows are patients.
        n_boot, seed: see :func:`bootstrap`.

    Returns:
        {"roc_auc": Interval, "f1": Interval}.
    """
    s, y = _scores_labels(scores, labels)

    def stat(s: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return {"roc_auc": roc_auc(s, y), "f1": binary_metrics(y, s >= threshold)["f1"]}

    return bootstrap(stat, [s, y], groups=groups, n_boot=n_boot, seed=seed)


def agreement_intervals(
    true_total: Any,
    pred_total: Any,
    true_present: Any,
    pred_present: Any,
    *,
    schemes: Sequence[str] = ("paper4",),
    vessels: Sequence[str] = VESSELS,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Interval]:
    """Per-patient score agreement with 95 % intervals over patients (one row each).

    Args:
        true_total, pred_total: [P] reference and predicted total Agatston scores.
        true_present, pred_present: bool [P, V] calcium presence per patient and vessel.
        schemes: risk schemes (``scoring.agatston.RISK_SCHEMES``) of the risk values.
        vessels: the V vessel names.
        n_boot, seed: see :func:`bootstrap`.

    Returns:
        {"icc": ICC(2,1) of the totals, "f1": presence F1 averaged over the vessels,
        "f1_<vessel>": per vessel, "<scheme>_accuracy": risk-category accuracy,
        "<scheme>_kappa_linear": linearly weighted kappa}, each an :class:`Interval`
        (NaN values when fewer than 2 patients).
    """
    t = _vector(true_total, "true_total").astype(np.float64)
    p = _vector(pred_total, "pred_total").astype(np.float64)
    _same_shape(t, p, "true_total/pred_total")
    tp = _binary(true_present, "true_present")
    pp = _binary(pred_present, "pred_present")
    _same_shape(tp, pp, "true_present/pred_present")
    if tp.shape != (t.size, len(vessels)):
        raise ValueError(f"presence must be [{t.size}, {len(vessels)}], got {tp.shape}")
    for scheme in schemes:
        if scheme not in RISK_SCHEMES:
            raise ValueError(f"unknown risk scheme {scheme!r}; known: {sorted(RISK_SCHEMES)}")
    # Categories once per patient; the replicates only resample them.
    cats = [
        np.array([[category_index(float(v), sc) for v in col] for col in (t, p)], np.int64).T
        for sc in schemes
    ]

    def stat(t, p, tp, pp, *cats) -> dict[str, float]:
        out = {"icc": icc(np.stack([t, p], axis=1)) if t.size >= 2 else math.nan}
        # presence_metrics' F1 per vessel and its NaN-ignoring mean, vectorised over vessels.
        hits = np.count_nonzero(tp & pp, axis=0)
        den = 2 * hits + np.count_nonzero(tp ^ pp, axis=0)
        f1 = np.where(den > 0, 2 * hits / np.maximum(den, 1), math.nan)
        out["f1"] = float(np.mean(f1[~np.isnan(f1)])) if np.any(den > 0) else math.nan
        out |= {f"f1_{v}": float(x) for v, x in zip(vessels, f1, strict=True)}
        for scheme, c in zip(schemes, cats, strict=True):
            k = len(RISK_SCHEMES[scheme])
            cm = np.bincount(c[:, 0] * k + c[:, 1], minlength=k * k).reshape(k, k)
            out[f"{scheme}_accuracy"] = accuracy_from_confusion(cm)
            out[f"{scheme}_kappa_linear"] = kappa_from_confusion(cm, "linear")
        return out

    return bootstrap(stat, [t, p, tp, pp, *cats], n_boot=n_boot, seed=seed)
