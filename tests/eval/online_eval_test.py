"""Online evaluation and run-health verdicts: hand-computed kNN votes, separable toys."""

import math

import ml_collections
import numpy as np
import pytest

from configs import common
from dinolg_jax.eval import health
from dinolg_jax.eval.metrics import roc_auc
from dinolg_jax.eval.online_eval import knn_scores, logistic_scores


def test_knn_vote_hand_computed():
    # Bank: three unit vectors; query along x. Cosine sims: 1, 0.6, 0. k = 2, T = 0.5.
    bank = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = np.array([True, False, True])
    got = knn_scores(bank, labels, np.array([[2.0, 0.0]]), k=2, temperature=0.5)
    w1, w2 = math.exp(1 / 0.5), math.exp(0.6 / 0.5)
    assert got[0] == pytest.approx(w1 / (w1 + w2), abs=1e-12)
    # k larger than the bank uses the whole bank
    allk = knn_scores(bank, labels, np.array([[2.0, 0.0]]), k=20, temperature=0.5)
    w3 = math.exp(0.0)
    assert allk[0] == pytest.approx((w1 + w3) / (w1 + w2 + w3), abs=1e-12)


def test_knn_and_logistic_separate_separable_toy_features():
    rng = np.random.default_rng(0)
    n = 200
    y = rng.random(n) < 0.2
    x = rng.normal(size=(n, 8))
    x[:, 0] += np.where(y, 4.0, -4.0)  # class along one axis, the rest noise
    yq = rng.random(100) < 0.2
    xq = rng.normal(size=(100, 8))
    xq[:, 0] += np.where(yq, 4.0, -4.0)
    assert roc_auc(knn_scores(x, y, xq, k=20, temperature=0.07), yq) == 1.0
    assert roc_auc(logistic_scores(x, y, xq), yq) == 1.0
    # labels independent of the features: near chance
    y_rand = rng.random(100) < 0.2
    auc = roc_auc(knn_scores(x, y, rng.normal(size=(100, 8)), k=20, temperature=0.07), y_rand)
    assert 0.3 < auc < 0.7


def test_logistic_scores_are_a_weighted_fit():
    # one feature, overlapping classes: the fitted direction must be positive
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    y = np.array([False, False, True, False, True, True])
    s = logistic_scores(x, y, x, steps=500)
    assert np.all(np.diff(s) > 0)
    assert roc_auc(s, y) == pytest.approx(8 / 9)


def _metrics(h, h_bar):
    return {"teacher_entropy": h, "teacher_batch_entropy": h_bar, "teacher_kl": h_bar - h}


def test_collapse_verdicts():
    cfg = common.pretrain_config().monitor
    k = 1024
    ln_k = math.log(k)
    uniform = health.collapse_verdict(_metrics(ln_k - 0.01, ln_k), k, cfg)
    assert uniform["collapsed"] and uniform["kind"] == "uniform"
    one = health.collapse_verdict(_metrics(0.01, 0.05), k, cfg)
    assert one["collapsed"] and one["kind"] == "one prototype"
    ok = health.collapse_verdict(_metrics(1.5, 6.0), k, cfg)
    assert not ok["collapsed"] and ok["kind"] is None
    assert health.warnings_for(ok, None) == []
    assert "uniform" in health.warnings_for(uniform, None)[0]


def test_left_init_verdict():
    cfg = ml_collections.ConfigDict({"min_auc_gain": 0.05})
    init = {"knn_roc_auc": 0.6, "probe_roc_auc": 0.55}
    moved = health.init_verdict({"knn_roc_auc": 0.62, "probe_roc_auc": 0.7}, init, cfg)
    assert moved["left_init"] and moved["probe_gain"] == pytest.approx(0.15)
    stuck = health.init_verdict({"knn_roc_auc": 0.61, "probe_roc_auc": 0.58}, init, cfg)
    assert not stuck["left_init"]
    assert "not left its random initialisation" in health.warnings_for(None, stuck)[0]
    nan = health.init_verdict({"knn_roc_auc": float("nan"), "probe_roc_auc": 0.5}, init, cfg)
    assert not nan["left_init"]
