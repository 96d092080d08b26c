"""Dense (patch-level) probe: row draw by hand, separable and label-blind tokens, cells."""

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from dinolg_jax.eval import patch_probe

SETTINGS = {"max_rows": 0, "lr": 0.05, "epochs": 20, "batch_size": 256}


def test_training_rows_keep_every_calcium_row_and_draw_the_rest():
    cells = np.zeros((4, 5), bool)
    cells[0, 1] = cells[2, 3] = cells[3, 0] = True  # flat rows 1, 13, 15
    np.testing.assert_array_equal(patch_probe.training_rows(cells, 0, 0), np.arange(20))
    np.testing.assert_array_equal(patch_probe.training_rows(cells, 20, 0), np.arange(20))
    rows = patch_probe.training_rows(cells, 10, 7)
    assert rows.size == 10 and np.all(np.diff(rows) > 0)  # sorted, no repeats
    assert {1, 13, 15} <= set(rows.tolist())
    np.testing.assert_array_equal(rows, patch_probe.training_rows(cells, 10, 7))  # seeded
    assert not np.array_equal(rows, patch_probe.training_rows(cells, 10, 8))
    # More calcium rows than half the budget: exactly half of it, the rest negatives.
    many = np.zeros(20, bool)
    many[:12] = True
    rows = patch_probe.training_rows(many, 8, 0)
    assert rows.size == 8 and int(many[rows].sum()) == 4


def _tokens(n, t, d, cells, signal, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, d)).astype(np.float32)
    x[..., 0] += signal * cells
    return x.astype(np.float16)


def _split(n, t, seed, calcified_every=3):
    """Cells: one calcium cell on every third slice, at a drawn position."""
    rng = np.random.default_rng(seed)
    cells = np.zeros((n, t), bool)
    for i in range(0, n, calcified_every):
        cells[i, rng.integers(t)] = True
    return cells


def test_separable_tokens_rank_every_calcium_patch_and_slice_first():
    n, t, d = 60, 16, 8
    cells = {s: _split(n, t, k) for k, s in enumerate(("train", "val", "test"))}
    feats = {
        s: {"tokens": _tokens(n, t, d, cells[s], 8.0, 10 + k), "has_calcium": cells[s].any(1)}
        for k, s in enumerate(("train", "val", "test"))
    }
    out = patch_probe.run_patch_probe(feats, cells, SETTINGS, seed=0)
    for s in ("val", "test"):
        assert out[s]["patch_roc_auc"] == 1.0 and out[s]["slice_roc_auc"] == 1.0
        assert out[s]["num_cells"] == n * t and out[s]["num_calcium_cells"] == 20
    assert out["train_rows"] == n * t and out["train_calcium_rows"] == 20
    assert out["pos_weight"] == (n * t - 20) / 20


def test_tokens_blind_to_calcium_score_near_chance():
    n, t, d = 200, 16, 8
    cells = {s: _split(n, t, k, 2) for k, s in enumerate(("train", "val", "test"))}
    feats = {
        s: {"tokens": _tokens(n, t, d, cells[s], 0.0, 20 + k), "has_calcium": cells[s].any(1)}
        for k, s in enumerate(("train", "val", "test"))
    }
    out = patch_probe.run_patch_probe(feats, cells, SETTINGS, seed=0)
    # 100 calcium cells of 3200: chance AUC has SD ~ 0.03 (Mann-Whitney, by hand below).
    u_sd = np.sqrt(100 * 3100 * (3200 + 1) / 12) / (100 * 3100)
    assert abs(out["test"]["patch_roc_auc"] - 0.5) < 4 * u_sd
    # The reported AUC is the Mann-Whitney U of the same scores (scipy as the reference).
    sep = {s: {"tokens": _tokens(n, t, d, cells[s], 1.0, 30 + k), "has_calcium": cells[s].any(1)}
           for k, s in enumerate(("train", "val", "test"))}  # fmt: skip
    out = patch_probe.run_patch_probe(sep, cells, SETTINGS, seed=0)
    x0 = sep["test"]["tokens"][..., 0].astype(np.float32).reshape(-1)
    y = cells["test"].reshape(-1)
    u = mannwhitneyu(x0[y], x0[~y]).statistic / (y.sum() * (~y).sum())
    assert 0.7 < u < 0.95  # one informative feature of unit signal
    assert out["test"]["patch_roc_auc"] == pytest.approx(u, abs=0.03)


def test_grid_mismatch_and_no_calcium_refused():
    cells = {s: np.zeros((4, 16), bool) for s in ("train", "val", "test")}
    feats = {s: {"tokens": np.zeros((4, 4, 2), np.float16), "has_calcium": np.zeros(4, bool)}
             for s in cells}  # fmt: skip
    with pytest.raises(ValueError, match="token grid must match"):
        patch_probe.run_patch_probe(feats, cells, SETTINGS, seed=0)
    feats = {s: {"tokens": np.zeros((4, 16, 2), np.float16), "has_calcium": np.zeros(4, bool)}
             for s in cells}  # fmt: skip
    with pytest.raises(ValueError, match="no patch of the train split"):
        patch_probe.run_patch_probe(feats, cells, SETTINGS, seed=0)
