"""Tests for dinolg_jax.eval.report against hand-computed small cases."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from dinolg_jax.eval import metrics, report


def s(rca=0.0, lad=0.0, lca=0.0, lcx=0.0):
    return {"RCA": rca, "LAD": lad, "LCA": lca, "LCX": lcx, "total": rca + lad + lca + lcx}


# Four patients; paper4 categories: p1 moderate, p2 very high, p3 low, p4 low.
TRUTH = {"p1": s(rca=50), "p2": s(lad=200, lcx=300), "p3": s(), "p4": s(rca=5)}
PRED = {
    # RCA ok, LAD false positive (p1), LCX missed (p2), LCA false positive (p3).
    "unet_only": {"p1": s(rca=40, lad=10), "p2": s(lad=150), "p3": s(lca=20), "p4": s(rca=5)},
    # RCA missed on p4 only.
    "gated": {"p1": s(rca=50), "p2": s(lad=200, lcx=300), "p3": s(), "p4": s()},
}


@pytest.fixture(scope="module")
def evals():
    return report.evaluate(TRUTH, PRED)


def test_presence_table6_by_hand(evals) -> None:
    u = evals["unet_only"]["presence"]
    assert (u["RCA"]["precision"], u["RCA"]["recall"], u["RCA"]["f1"]) == (1.0, 1.0, 1.0)
    assert (u["LAD"]["precision"], u["LAD"]["recall"]) == (0.5, 1.0)
    assert u["LAD"]["f1"] == pytest.approx(2 / 3)
    assert u["LCA"]["precision"] == 0.0 and math.isnan(u["LCA"]["recall"])
    assert math.isnan(u["LCX"]["precision"]) and u["LCX"]["recall"] == 0.0
    assert u["mean"]["precision"] == pytest.approx(0.5)  # NaN-ignoring mean of (1, .5, 0)
    assert u["mean"]["recall"] == pytest.approx(2 / 3)  # of (1, 1, 0)
    assert u["mean"]["f1"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4)
    g = evals["gated"]["presence"]
    assert (g["RCA"]["precision"], g["RCA"]["recall"]) == (1.0, 0.5)
    assert g["RCA"]["f1"] == pytest.approx(2 / 3)
    assert math.isnan(g["LCA"]["f1"])
    assert g["mean"]["f1"] == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_risk_confusion_accuracy_and_linear_kappa_by_hand(evals) -> None:
    r = evals["unet_only"]["risk"]["paper4"]
    assert r["classes"] == ["low", "moderate", "high", "very high"]
    # true rows: low (p3 -> moderate, p4 -> low), moderate (p1 ok), very high (p2 -> high).
    assert r["confusion"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    assert r["accuracy"] == 0.5
    # Weighted disagreement observed 1/6, expected 3/8 (marginals [2,1,0,1]/4, [1,2,1,0]/4).
    assert r["kappa_linear"] == pytest.approx(1 - (1 / 6) / (3 / 8))
    g = evals["gated"]["risk"]
    assert g["paper4"]["accuracy"] == 1.0 and g["paper4"]["kappa_linear"] == pytest.approx(1.0)
    # standard5 separates p4 (5 -> "1-10") from its prediction (0 -> "0").
    assert g["standard5"]["accuracy"] == 0.75
    assert g["standard5"]["confusion"][1] == [1, 0, 0, 0, 0]


def test_agreement_against_direct_formulas(evals) -> None:
    a = evals["gated"]["agreement"]
    t = np.array([50.0, 500.0, 0.0, 5.0])
    p = np.array([50.0, 500.0, 0.0, 0.0])
    assert a["n"] == 4
    assert a["pearson"] == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert a["bland_altman"]["bias"] == pytest.approx(-1.25)
    sd = np.std(p - t, ddof=1)
    assert a["bland_altman"]["loa_upper"] == pytest.approx(-1.25 + 1.96 * sd)
    # ICC(2,1) from the two-way ANOVA written out.
    x = np.stack([t, p], 1)
    n, k = x.shape
    g = x.mean()
    msr = k * ((x.mean(1) - g) ** 2).sum() / (n - 1)
    msc = n * ((x.mean(0) - g) ** 2).sum() / (k - 1)
    mse = (((x - x.mean(1, keepdims=True) - x.mean(0) + g) ** 2).sum()) / ((n - 1) * (k - 1))
    icc = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    assert a["icc"] == pytest.approx(icc)
    # Spearman: ranks t (3, 4, 1, 2) vs p (3, 4, 1.5, 1.5).
    rt, rp = np.array([3, 4, 1, 2.0]), np.array([3, 4, 1.5, 1.5])
    assert a["spearman"] == pytest.approx(np.corrcoef(rt, rp)[0, 1])


def test_markdown_report_holds_the_values(tmp_path: Path, evals) -> None:
    ng = report.evaluate_nongated(
        {"nongated-1": s(rca=12), "nongated-2": s(), "nongated-9": s(lad=1)},
        {"1A": {**s(rca=10), "total_mismatch": False}, "2A": {**s(), "total_mismatch": False}},
    )
    assert ng["studies"] == ["nongated-1", "nongated-2"] and ng["missing_reference"] == [
        "nongated-9"
    ]
    assert ng["risk"]["paper4"]["accuracy"] == 0.5  # 12 -> moderate vs 10 -> low
    conv = {"threshold_hu": 130, "connectivity": 4, "min_area_mm2": 1.0}
    path = report.write_report(tmp_path, evals, conv, nongated=ng, notes=["Demo-size run."])
    text = path.read_text()
    assert "Agatston convention: threshold_hu = 130, connectivity = 4, min_area_mm2 = 1.0." in text
    assert "Demo-size run." in text
    assert "(1000 resamples, seed 0)" in text
    # Table 6 rows: U-Net only (P, R, F1) then integrated (P, R, F1), F1 with its interval.
    # Where every resample agrees (F1 1 or 0 on each defined one) the interval is a point.
    assert "| LAD | 0.50 | 1.00 | 0.67 [0.00, 1.00] | 1.00 | 1.00 | 1.00 [1.00, 1.00] |" in text
    assert "| LCA | 0.00 | n/a | 0.00 [0.00, 0.00] | n/a | n/a | n/a |" in text
    assert "| RCA | 1.00 | 1.00 | 1.00 [1.00, 1.00] | 1.00 | 0.50 | 0.67 [0.00, 1.00] |" in text
    assert "| Average | 0.50 | 0.67 | 0.42 [0.33, 0.67] | 1.00 | 0.83 | 0.89 [0.00, 1.00] |" in text
    assert "accuracy 0.500 [0.000, 1.000], linearly weighted kappa 0.556 [0.000, 1.000]" in text
    assert "accuracy 1.000 [1.000, 1.000], linearly weighted kappa 1.000 [1.000, 1.000]" in text
    assert "| very high | 0 | 0 | 1 | 0 |" in text
    assert "| 4 | 0.501 [-0.333, 1.000] | 0.492 |" in text and "| -1.25 |" in text
    assert "| p2 | 500.0 (very high) | 150.0 (high) | 500.0 (very high) |" in text
    assert "| p3 | 0.0 (low) | 20.0 (moderate) | 0.0 (low) |" in text
    for name in ("gated_scatter.png", "gated_bland_altman.png", "nongated_scatter.png"):
        assert f"]({name})" in text
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _exact_bounds(stat, n: int) -> tuple[float, float, float]:
    """2.5 / 97.5 % quantiles of ``stat`` over all n^n ordered patient draws (NaN dropped),
    and the CDF's closest approach to those levels."""
    v = np.array([stat(list(d)) for d in itertools.product(range(n), repeat=n)])
    atoms, counts = np.unique(np.round(v[np.isfinite(v)], 12), return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    margin = min(np.min(np.abs(cdf - 0.025)), np.min(np.abs(cdf - 0.975)))
    return atoms[np.argmax(cdf >= 0.025)], atoms[np.argmax(cdf >= 0.975)], margin


def test_intervals_are_the_enumerated_bootstrap_law(evals) -> None:
    # 4 patients: the 256 equally likely draws, scored by the plain metrics functions.
    ids = sorted(TRUTH)
    t_total = np.array([TRUTH[i]["total"] for i in ids])
    t_pres = metrics.presence_from_scores([TRUTH[i] for i in ids])
    cases = {
        ("unet_only", "f1"): lambda p, d: metrics.presence_metrics(t_pres[d], p[1][d])["mean"][
            "f1"
        ],
        ("unet_only", "paper4_accuracy"): lambda p, d: metrics.accuracy_from_confusion(
            metrics.risk_confusion(t_total[d], p[0][d], "paper4")
        ),
        ("gated", "icc"): lambda p, d: metrics.icc(np.stack([t_total[d], p[0][d]], 1)),
    }
    for (mode, name), fn in cases.items():
        pred = PRED[mode]
        p = (np.array([pred[i]["total"] for i in ids]), metrics.presence_from_scores(
            [pred[i] for i in ids]))  # fmt: skip
        lo, hi, margin = _exact_bounds(lambda d, fn=fn, p=p: fn(p, d), 4)
        assert margin > 0.02  # 4 standard errors of a 1000-replicate percentile
        got = evals[mode]["intervals"][name]
        assert got["ci95"] == pytest.approx([lo, hi], abs=1e-12), (mode, name)
        assert got["n_groups"] == 4
    assert (evals["unet_only"]["intervals"]["f1"]["ci95"]) == pytest.approx([1 / 3, 2 / 3])
    assert evals["gated"]["bootstrap"] == {
        "over": "patients", "level": 0.95, "n_boot": 1000, "seed": 0
    }  # fmt: skip


def test_evaluate_pairs_predictions_with_references() -> None:
    truth = {"a": s(rca=2)}
    preds = {"gated": {"a": s(rca=3, lcx=1)}, "unet_only": {"c": s()}}
    ev = report.evaluate(truth, preds)
    assert ev["unet_only"]["studies"] == [] and ev["unet_only"]["missing_reference"] == ["c"]
    assert math.isnan(ev["gated"]["agreement"]["icc"])  # one patient: undefined
