"""Tests for eval/metrics.py against hand-computed values, brute force and scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from dinolg_jax.eval import metrics as m

# ---------------------------------------------------------------------------
# Binary metrics.


def test_binary_counts_and_ratios_by_hand():
    y_true = [1, 1, 1, 0, 0, 0, 0, 1]
    y_pred = [1, 0, 1, 1, 0, 0, 1, 1]
    res = m.binary_metrics(y_true, y_pred)
    assert (res["tp"], res["tn"], res["fp"], res["fn"]) == (3, 2, 2, 1)
    assert res["precision"] == pytest.approx(3 / 5)
    assert res["recall"] == pytest.approx(3 / 4)
    assert res["specificity"] == pytest.approx(2 / 4)
    assert res["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert res["accuracy"] == pytest.approx(5 / 8)


def test_zero_division():
    res = m.binary_metrics([0, 0, 0], [0, 0, 0])
    assert math.isnan(res["precision"]) and math.isnan(res["recall"]) and math.isnan(res["f1"])
    assert res["specificity"] == 1.0 and res["accuracy"] == 1.0
    res0 = m.binary_metrics([0, 0, 0], [0, 0, 0], zero_division=0.0)
    assert res0["precision"] == 0.0 and res0["f1"] == 0.0
    with pytest.raises(ValueError, match="binary"):
        m.binary_counts([0, 2], [0, 1])
    with pytest.raises(ValueError, match="shapes differ"):
        m.binary_counts([0, 1], [0, 1, 1])


def test_rank_average_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=40).astype(np.float64)  # many ties
    np.testing.assert_allclose(m.rank_average(x), stats.rankdata(x))
    np.testing.assert_array_equal(m.rank_average([3, 1, 3, 2]), [3.5, 1.0, 3.5, 2.0])  # by hand


def _auc_brute(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_roc_auc_hand_and_brute_force():
    assert m.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert m.roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert math.isnan(m.roc_auc([0.1, 0.2], [1, 1]))
    rng = np.random.default_rng(1)
    for _ in range(5):
        scores = np.round(rng.random(60), 1)  # ties
        labels = rng.random(60) < 0.3
        assert m.roc_auc(scores, labels) == pytest.approx(_auc_brute(scores, labels), abs=1e-12)
        fpr, tpr, thr = m.roc_curve(scores, labels)
        assert thr[0] == np.inf and (fpr[-1], tpr[-1]) == (1.0, 1.0)
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids
        assert area == pytest.approx(_auc_brute(scores, labels), abs=1e-12)
        for f, t, th in zip(fpr[1:], tpr[1:], thr[1:], strict=True):
            pred = scores >= th
            assert t == pytest.approx(pred[labels].mean()) and f == pytest.approx(
                pred[~labels].mean()
            )


def test_threshold_for_recall():
    pos = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    scores = [*pos, 0.95, 0.65, 0.25, 0.0]
    labels = [1] * 10 + [0] * 4
    assert m.threshold_for_recall(scores, labels, 0.7) == 0.3  # 7 of 10 kept
    assert m.threshold_for_recall(scores, labels, 1.0) == 0.05
    assert m.threshold_for_recall(scores, labels, 0.05) == 0.9
    # Ties among positives: all three 0.5 positives come in together.
    assert m.threshold_for_recall([0.5, 0.5, 0.5, 0.2], [1, 1, 1, 1], 0.5) == 0.5
    # Brute force: the largest candidate threshold whose recall meets the target.
    rng = np.random.default_rng(2)
    for target in (0.5, 0.9, 0.95, 0.99):
        s = np.round(rng.random(200), 2)
        y = rng.random(200) < 0.15
        t = m.threshold_for_recall(s, y, target)
        ok = [c for c in np.unique(s) if (s[y] >= c).mean() >= target]
        assert t == max(ok)
        assert (s[y] >= t).mean() >= target
    with pytest.raises(ValueError, match="target"):
        m.threshold_for_recall(scores, labels, 0.0)
    with pytest.raises(ValueError, match="target"):
        m.threshold_for_recall(scores, labels, 1.5)
    with pytest.raises(ValueError, match="positive"):
        m.threshold_for_recall([0.1, 0.2], [0, 0])


# ---------------------------------------------------------------------------
# Segmentation overlap.

_TARGET = np.array([[[1, 1, 0], [0, 2, 0]], [[0, 0, 0], [0, 0, 0]]])
_PRED = np.array([[[1, 0, 0], [0, 2, 2]], [[1, 0, 0], [0, 0, 0]]])


def test_iou_dice_hand_computed():
    pooled = m.iou_dice(_PRED, _TARGET, 3)
    # class 0: I = 2 + 5, union = (3 + 3 - 2) + (6 + 5 - 5) = 10, sizes 6 + 11.
    np.testing.assert_allclose(pooled["iou"], [7 / 10, 1 / 3, 1 / 2])
    np.testing.assert_allclose(pooled["dice"], [14 / 17, 2 / 4, 2 / 3])
    np.testing.assert_array_equal(pooled["slices"], [2, 2, 2])
    present = m.iou_dice(_PRED, _TARGET, 3, only_present=True)
    np.testing.assert_allclose(present["iou"][1:], [1 / 2, 1 / 2])
    np.testing.assert_allclose(present["dice"][1:], [2 / 3, 2 / 3])
    np.testing.assert_array_equal(present["slices"], [2, 1, 1])
    per_slice = m.iou_dice(_PRED, _TARGET, 3, average="per_slice")
    # class 1: slice 0 IoU 1/2, slice 1 IoU 0 (a false positive); class 2: 1/2 and empty 1.
    np.testing.assert_allclose(per_slice["iou"][1:], [(1 / 2 + 0) / 2, (1 / 2 + 1) / 2])
    np.testing.assert_allclose(per_slice["dice"][1:], [(2 / 3 + 0) / 2, (2 / 3 + 1) / 2])


def test_iou_dice_matches_loop_and_streams():
    rng = np.random.default_rng(3)
    pred = rng.choice(5, size=(6, 9, 9), p=[0.8, 0.05, 0.05, 0.05, 0.05])
    target = rng.choice(5, size=(6, 9, 9), p=[0.8, 0.05, 0.05, 0.05, 0.05])
    target[2] = 0
    res = m.iou_dice(pred, target, 5)
    for k in range(5):
        inter = np.sum((pred == k) & (target == k))
        union = np.sum((pred == k) | (target == k))
        assert res["iou"][k] == pytest.approx(inter / union)
        assert res["dice"][k] == pytest.approx(
            2 * inter / ((pred == k).sum() + (target == k).sum())
        )
    # Counts accumulated over two batches give the same result.
    counts = np.concatenate(
        [m.overlap_counts(pred[:2], target[:2]), m.overlap_counts(pred[2:], target[2:])]
    )
    np.testing.assert_allclose(m.iou_dice_from_counts(counts)["iou"], res["iou"])
    absent = m.iou_dice(np.zeros((1, 3, 3), int), np.zeros((1, 3, 3), int), 2)
    assert math.isnan(absent["iou"][1])
    with pytest.raises(ValueError, match=r"0\.\.4"):
        m.overlap_counts(np.full((1, 2, 2), 5), np.zeros((1, 2, 2), int))
    with pytest.raises(ValueError, match="average"):
        m.iou_dice(pred, target, 5, average="macro")


# ---------------------------------------------------------------------------
# Per-artery presence.


def test_presence_metrics():
    true = [
        {"RCA": 5.0, "LAD": 0.0, "LCA": 0.0, "LCX": 1.0},
        {"RCA": 0.0, "LAD": 20.0, "LCA": 0.0, "LCX": 0.0},
        {"RCA": 3.0, "LAD": 2.0, "LCA": 0.0, "LCX": 0.0},
        {"RCA": 0.0, "LAD": 0.0, "LCA": 0.0, "LCX": 0.0},
    ]
    pred = [
        {"RCA": 4.0, "LAD": 1.0, "LCA": 0.0, "LCX": 0.0},
        {"RCA": 0.0, "LAD": 18.0, "LCA": 0.0, "LCX": 0.0},
        {"RCA": 3.0, "LAD": 0.0, "LCA": 0.0, "LCX": 0.0},
        {"RCA": 1.0, "LAD": 0.0, "LCA": 0.0, "LCX": 0.0},
    ]
    res = m.presence_metrics(m.presence_from_scores(true), m.presence_from_scores(pred))
    # RCA: TP 2, FP 1, FN 0; LAD: TP 1, FP 1, FN 1; LCA: nothing anywhere; LCX: FN 1.
    assert res["RCA"]["precision"] == pytest.approx(2 / 3) and res["RCA"]["recall"] == 1.0
    assert res["RCA"]["f1"] == pytest.approx(4 / 5)
    assert res["LAD"]["f1"] == pytest.approx(1 / 2)
    assert math.isnan(res["LCA"]["f1"]) and res["LCA"]["accuracy"] == 1.0
    assert res["LCX"]["recall"] == 0.0 and res["LCX"]["f1"] == 0.0
    assert res["mean"]["f1"] == pytest.approx((4 / 5 + 1 / 2 + 0.0) / 3)
    assert res["mean"]["accuracy"] == pytest.approx((3 / 4 + 2 / 4 + 1 + 3 / 4) / 4)


# ---------------------------------------------------------------------------
# Multi-class agreement.

_TABLE = np.array([[10, 2, 0], [3, 15, 2], [1, 2, 15]])


def _ratings_from_table(table):
    true, pred = [], []
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            true += [i] * int(table[i, j])
            pred += [j] * int(table[i, j])
    return np.array(true), np.array(pred)


def test_confusion_accuracy_kappa_by_hand():
    true, pred = _ratings_from_table(_TABLE)
    cm = m.confusion_matrix(true, pred, 3)
    np.testing.assert_array_equal(cm, _TABLE)
    assert m.accuracy_from_confusion(cm) == pytest.approx(40 / 50)
    # Marginals: rows 12, 20, 18; columns 14, 19, 17; n = 50.
    p_o = 40 / 50
    p_e = (12 * 14 + 20 * 19 + 18 * 17) / 50**2
    assert m.cohen_kappa(true, pred, 3) == pytest.approx((p_o - p_e) / (1 - p_e))
    # Linear agreement weights 1, 0.5, 0 for |i - j| = 0, 1, 2.
    p_o_lin = (40 + 0.5 * (2 + 3 + 2 + 2)) / 50
    p_e_lin = (854 + 0.5 * (12 * 19 + 20 * 14 + 20 * 17 + 18 * 19)) / 50**2
    kappa_lin = (p_o_lin - p_e_lin) / (1 - p_e_lin)
    assert kappa_lin == pytest.approx(0.3104 / 0.4204)
    assert m.cohen_kappa(true, pred, 3, weights="linear") == pytest.approx(kappa_lin)
    # Quadratic agreement weights 1, 0.75, 0.
    p_o_q = (40 + 0.75 * 9) / 50
    p_e_q = (854 + 0.75 * 1190) / 50**2
    assert m.kappa_from_confusion(_TABLE, "quadratic") == pytest.approx(
        (p_o_q - p_e_q) / (1 - p_e_q)
    )
    assert m.kappa_from_confusion(np.diag([3, 4, 5])) == pytest.approx(1.0)
    assert math.isnan(m.kappa_from_confusion(np.array([[5, 0], [0, 0]])))
    with pytest.raises(ValueError, match="weights"):
        m.kappa_from_confusion(_TABLE, "cubic")


def test_risk_confusion():
    cm = m.risk_confusion([0, 5, 50, 150, 500, 10.4], [12, 5, 50, 401, 90, 10.6], "paper4")
    expected = np.zeros((4, 4), int)
    for t, p in [(0, 1), (0, 0), (1, 1), (2, 3), (3, 1), (0, 1)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    assert m.risk_confusion([0, 1], [0, 0], "standard5").shape == (5, 5)
    with pytest.raises(ValueError, match="scheme"):
        m.risk_confusion([0], [0], "seven")


# ---------------------------------------------------------------------------
# Continuous agreement.

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
_SF = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
    dtype=float,
)


def _icc_by_hand(x):
    n, k = len(x), len(x[0])
    grand = sum(sum(row) for row in x) / (n * k)
    row_means = [sum(row) / k for row in x]
    col_means = [sum(x[i][j] for i in range(n)) / n for j in range(k)]
    bms = k * sum((r - grand) ** 2 for r in row_means) / (n - 1)
    jms = n * sum((c - grand) ** 2 for c in col_means) / (k - 1)
    ems = sum(
        (x[i][j] - row_means[i] - col_means[j] + grand) ** 2 for i in range(n) for j in range(k)
    ) / ((n - 1) * (k - 1))
    icc21 = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
    icc31 = (bms - ems) / (bms + (k - 1) * ems)
    return icc21, icc31


def test_icc_shrout_fleiss():
    icc21, icc31 = _icc_by_hand(_SF.tolist())
    assert m.icc(_SF, "2,1") == pytest.approx(icc21, abs=1e-12)
    assert m.icc(_SF, "3,1") == pytest.approx(icc31, abs=1e-12)
    assert m.icc(_SF, "agreement") == m.icc(_SF)
    # The published values: ICC(2,1) = .29, ICC(3,1) = .71.
    assert round(m.icc(_SF, "2,1"), 2) == 0.29
    assert round(m.icc(_SF, "3,1"), 2) == 0.71


def test_icc_bias_and_errors():
    ref = np.array([0.0, 10.0, 50.0, 120.0, 400.0, 900.0])
    same = np.stack([ref, ref], axis=1)
    shifted = np.stack([ref, ref + 50.0], axis=1)
    assert m.icc(same) == pytest.approx(1.0)
    assert m.icc(shifted, "3,1") == pytest.approx(1.0)  # consistency ignores the bias
    icc21, _ = _icc_by_hand(shifted.tolist())
    assert m.icc(shifted, "2,1") == pytest.approx(icc21) and icc21 < 1.0
    assert math.isnan(m.icc(np.ones((3, 2))))
    with pytest.raises(ValueError, match="kind"):
        m.icc(same, "1,1")
    with pytest.raises(ValueError, match="ratings"):
        m.icc(ref)


def test_pearson_spearman_match_scipy():
    rng = np.random.default_rng(4)
    x = rng.gamma(1.0, 100.0, size=50)
    y = x + rng.normal(0, 40, size=50)
    y[:5] = y[5]  # ties
    assert m.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert m.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert m.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    # By hand: centred (-1, 0, 1) . (-1, 1, 0) = 1 over sqrt(2 * 2).
    assert m.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5, abs=1e-15)
    # Ranks (1.5, 1.5, 3) and (1, 2, 3): 1.5 / sqrt(1.5 * 2).
    assert m.spearman([1, 1, 2], [5, 6, 7]) == pytest.approx(1.5 / math.sqrt(3.0), abs=1e-15)
    assert math.isnan(m.spearman([2.0, 2.0], [1.0, 3.0])) and math.isnan(m.pearson([1.0], [2.0]))
    assert math.isnan(m.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="non-finite"):
        m.pearson([1.0, np.nan], [1.0, 2.0])


def test_bland_altman_by_hand():
    ba = m.bland_altman([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0])
    sd = math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3)
    assert ba.bias == pytest.approx(1.5) and ba.sd == pytest.approx(sd)
    assert ba.lower == pytest.approx(1.5 - 1.96 * sd) and ba.upper == pytest.approx(1.5 + 1.96 * sd)
    np.testing.assert_allclose(ba.means, [1.0, 1.5, 2.0, 2.5])
    np.testing.assert_allclose(ba.diffs, [0.0, 1.0, 2.0, 3.0])
    assert ba.summary()["n"] == 4
    with pytest.raises(ValueError, match="2 pairs"):
        m.bland_altman([1.0], [1.0])


# ---------------------------------------------------------------------------
# Bootstrap intervals over patients: toy tables whose bootstrap law is known.


def _mean_stat(v):
    return {"mean": float(np.mean(v)) if v.size else math.nan}


def test_bootstrap_resamples_patients_not_rows():
    # Patient A has 1 row (0), patient B 3 rows (1). Drawing 2 patients: AA -> 0 (1/4),
    # AB or BA -> 3/4 (1/2), BB -> 1 (1/4); a row-level bootstrap would give 1/4, 1/2, ...
    values = np.array([0.0, 1.0, 1.0, 1.0])
    groups = np.array(["A", "B", "B", "B"])
    reps = m.bootstrap_replicates(_mean_stat, [values], groups=groups, n_boot=4000, seed=1)
    r = reps["mean"]
    assert set(np.unique(r)) <= {0.0, 0.75, 1.0}
    sd = math.sqrt(0.25 * 0.75 / 4000)
    assert abs(np.mean(r == 0.0) - 0.25) < 5 * sd
    assert abs(np.mean(r == 0.75) - 0.5) < 5 * math.sqrt(0.25 / 4000)
    assert abs(np.mean(r == 1.0) - 0.25) < 5 * sd


def test_bootstrap_interval_is_the_enumerated_percentile():
    # 4 patients, one value each: the 4^4 equally likely draws give the exact law of the
    # resampled mean; its 2.5 % and 97.5 % quantiles are the interval's bounds.
    values = np.array([0.0, 1.0, 2.0, 6.0])
    means = np.array([np.mean(d) for d in itertools.product(values, repeat=4)])
    atoms, counts = np.unique(means, return_counts=True)
    cdf = np.cumsum(counts) / means.size
    lo, hi = atoms[np.argmax(cdf >= 0.025)], atoms[np.argmax(cdf >= 0.975)]
    # By hand: P(sum <= 1) = (1 + 4) / 256 < 2.5 % < P(sum <= 2) = 15 / 256, so lo = 2 / 4;
    # P(sum >= 19) = (1 + 4) / 256 + ... = 1 - 0.9648 > 2.5 % > P(sum >= 20), so hi = 19 / 4.
    assert (lo, hi) == (0.5, 4.75)
    # The CDF steps over 2.5 % and 97.5 % at least 0.0055 away (5 standard errors of a
    # 20000-replicate estimate), so the replicates' percentiles land on these atoms.
    assert np.min(np.abs(cdf - 0.025)) > 0.005 and np.min(np.abs(cdf - 0.975)) > 0.005
    out = m.bootstrap(_mean_stat, [values], n_boot=20000, seed=0)["mean"]
    assert (out.value, out.lo, out.hi, out.n_boot, out.n_groups) == (2.25, lo, hi, 20000, 4)
    again = m.bootstrap(_mean_stat, [values], n_boot=20000, seed=0)["mean"]
    assert again == out  # seeded: the same interval
    assert out.format() == "2.25 [0.50, 4.75]"


def test_agreement_intervals_of_a_perfect_table_are_points():
    # Prediction equal to the reference for every patient: every resample agrees fully.
    total = np.array([0.0, 0.0, 35.0, 150.0, 420.0, 1200.0])
    present = np.array([[t > 0, t > 100, False, t > 1000] for t in total])
    out = m.agreement_intervals(total, total, present, present, schemes=("paper4", "standard5"))
    assert sorted(out) == sorted(
        ["icc", "f1", *(f"f1_{v}" for v in m.VESSELS)]
        + [f"{s}_{k}" for s in ("paper4", "standard5") for k in ("accuracy", "kappa_linear")]
    )
    for name in ("icc", "f1", "paper4_accuracy", "paper4_kappa_linear", "standard5_accuracy"):
        iv = out[name]
        assert (iv.value, iv.lo, iv.hi) == pytest.approx((1.0, 1.0, 1.0), abs=1e-12), name
        assert iv.n_groups == 6 and 900 < iv.n_boot <= 1000  # all-equal resamples dropped
    assert out["paper4_accuracy"].n_boot == 1000  # accuracy is always defined
    assert math.isnan(out["f1_LCA"].value) and out["f1_LCA"].n_boot == 0  # no LCA calcium
    # Mean F1 is undefined only when all 6 draws are the 2 calcium-free patients: (1/3)^6.
    assert out["f1"].summary() == {"value": 1.0, "ci95": [1.0, 1.0], "n_boot": 998, "n_groups": 6}
    assert out["f1_LCA"].summary()["ci95"] == [None, None]


def test_agreement_intervals_values_are_the_point_metrics():
    rng = np.random.default_rng(7)
    t = rng.gamma(0.8, 300.0, size=30) * (rng.random(30) > 0.3)
    p = t * rng.uniform(0.3, 1.7, size=30) + rng.normal(0, 30, 30).clip(0)
    tp, pp = rng.random((30, 4)) > 0.5, rng.random((30, 4)) > 0.4
    out = m.agreement_intervals(t, p, tp, pp, n_boot=200, seed=3)
    cm = m.risk_confusion(t, p, "paper4")
    assert out["icc"].value == m.icc(np.stack([t, p], 1))
    assert out["paper4_accuracy"].value == m.accuracy_from_confusion(cm)
    assert out["paper4_kappa_linear"].value == m.kappa_from_confusion(cm, "linear")
    assert out["f1"].value == m.presence_metrics(tp, pp)["mean"]["f1"]
    for iv in out.values():
        assert iv.lo <= iv.value <= iv.hi and iv.lo < iv.hi and iv.n_boot == 200
    other = m.agreement_intervals(t, p, tp, pp, n_boot=200, seed=4)
    assert other["icc"].lo != out["icc"].lo  # the seed moves the replicates


def test_binary_intervals_resample_slices_by_patient():
    # Patient 0: slices scored 0.9 (calcified) and 0.1 (not); patient 1: 0.2 (calcified)
    # and 0.3 (not). AUC on both: pairs (0.9>0.1, 0.9>0.3, 0.2>0.1, 0.2<0.3) = 3/4.
    # Drawing {0,0}: AUC 1, F1 (t = 0.5) 1; {1,1}: AUC 0, F1 0; {0,1}/{1,0}: 3/4 and 2/3.
    scores = np.array([0.9, 0.1, 0.2, 0.3])
    labels = np.array([1, 0, 1, 0])
    groups = np.array([0, 0, 1, 1])
    out = m.binary_intervals(scores, labels, 0.5, groups=groups, n_boot=2000, seed=0)
    assert out["roc_auc"].value == 0.75 and out["f1"].value == pytest.approx(2 / 3)
    assert (out["roc_auc"].lo, out["roc_auc"].hi) == (0.0, 1.0)
    assert (out["f1"].lo, out["f1"].hi) == (0.0, 1.0)
    reps = m.bootstrap_replicates(
        lambda s, y: {"auc": m.roc_auc(s, y)}, [scores, labels], groups=groups, n_boot=500
    )
    assert set(np.unique(reps["auc"])) == {0.0, 0.75, 1.0}


def test_format_interval_and_errors():
    assert m.format_interval(0.8234, (0.7412, 0.8849)) == "0.82 [0.74, 0.88]"
    assert m.format_interval(0.8234, [0.7412, 0.8849], digits=3) == "0.823 [0.741, 0.885]"
    assert m.format_interval(0.5, None) == "0.50 [n/a]"
    assert m.format_interval(0.5, [None, None]) == "0.50 [n/a]"
    assert m.format_interval(math.nan, (0.1, 0.2)) == "n/a" == m.format_interval(None, None)
    with pytest.raises(ValueError, match="same number of rows"):
        m.bootstrap(_mean_stat, [np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="groups must be"):
        m.bootstrap(_mean_stat, [np.zeros(3)], groups=[0, 1])
    with pytest.raises(ValueError, match="level"):
        m.bootstrap(_mean_stat, [np.zeros(3)], level=95)
    with pytest.raises(ValueError, match="unknown risk scheme"):
        m.agreement_intervals(
            [1.0, 2.0], [1.0, 2.0], np.ones((2, 4)), np.ones((2, 4)), schemes=("x",)
        )
