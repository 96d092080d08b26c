"""eval.paired_bootstrap on toy tables whose bootstrap distribution is worked out by hand."""

import numpy as np
import pytest

from dinolg_jax.eval.metrics import roc_auc
from dinolg_jax.eval.paired_bootstrap import paired_difference


def _mean(values, labels):
    del labels
    return float(np.mean(values))


def test_two_patients_differing_by_0_and_1_give_the_interval_0_to_1():
    # Patient differences {0, 1}: a replicate's mean of 2 draws is 0, 0.5 or 1 with
    # probabilities 1/4, 1/2, 1/4, so the 2.5th percentile is 0 and the 97.5th is 1.
    out = paired_difference([[0.0, 1.0]], [[0.0, 0.0]], [0, 1], ["p1", "p2"], _mean, n_boot=2000)
    assert out["diff"] == 0.5 and out["ci95"] == [0.0, 1.0]
    assert (out["n_seeds"], out["n_groups"], out["n_boot"]) == (1, 2, 2000)


def test_a_constant_difference_has_a_zero_width_interval():
    rng = np.random.default_rng(0)
    b = [rng.normal(size=30) for _ in range(3)]
    a = [x + 0.25 for x in b]
    out = paired_difference(a, b, np.zeros(30), np.repeat(np.arange(10), 3), _mean, n_boot=200)
    assert out["diff"] == pytest.approx(0.25)
    assert out["ci95"] == pytest.approx([0.25, 0.25])


def test_seeds_are_resampled_too():
    # One patient; seed differences {0, 1}: the same 1/4, 1/2, 1/4 law over seeds.
    out = paired_difference([[0.0], [1.0]], [[0.0], [0.0]], [0], ["p"], _mean, n_boot=2000)
    assert out["diff"] == 0.5 and out["ci95"] == [0.0, 1.0] and out["n_seeds"] == 2


def test_a_patients_rows_are_resampled_together():
    # Patient A ranks its two slices right (AUC 1), patient B wrong (AUC 0); arm b scores
    # every slice 0.5 (AUC 0.5). Drawing {A, A}, {A, B}, {B, B} gives a - b = 0.5, 0,
    # -0.5 with probabilities 1/4, 1/2, 1/4. Rows drawn one by one would also give
    # resamples with a single class (dropped) and other values.
    scores = np.array([1.0, 0.0, 0.0, 1.0])
    labels = np.array([1, 0, 1, 0])
    groups = np.array(["A", "A", "B", "B"])
    out = paired_difference([scores], [np.full(4, 0.5)], labels, groups, roc_auc, n_boot=2000)
    assert out["diff"] == 0.0 and out["ci95"] == [-0.5, 0.5] and out["n_boot"] == 2000


def test_same_seed_same_interval_and_unpaired_input_is_refused():
    rng = np.random.default_rng(1)
    a, b = [rng.normal(size=20)], [rng.normal(size=20)]
    groups = np.arange(20) // 2
    one = paired_difference(a, b, np.zeros(20), groups, _mean, n_boot=100, seed=3)
    assert paired_difference(a, b, np.zeros(20), groups, _mean, n_boot=100, seed=3) == one
    with pytest.raises(ValueError, match="must be paired"):
        paired_difference(a + a, b, np.zeros(20), groups, _mean)
    with pytest.raises(ValueError, match="19 rows"):
        paired_difference([np.zeros(19)], b, np.zeros(20), groups, _mean)
