"""eval.roc_plot: the ROC drawn and the threshold's point against a hand count."""

import numpy as np
from PIL import Image

from dinolg_jax.eval import roc_plot

SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2])
LABELS = np.array([1, 1, 0, 1, 0, 0, 1, 0], bool)


def test_curve_point_and_png_against_a_hand_count(tmp_path):
    path = tmp_path / "roc_val.png"
    drawn = roc_plot.roc_png(SCORES, LABELS, 0.6, path, "linear probe, val")
    # score >= 0.6: 0.9, 0.8, 0.6 of the 4 calcified (recall 3/4); 0.7 of the 4 others
    assert drawn["point"] == (0.25, 0.75)
    # one ROC point per score, descending: (FP/4, TP/4) after each
    np.testing.assert_array_equal(drawn["fpr"], np.array([0, 0, 0, 1, 1, 2, 3, 3, 4]) / 4)
    np.testing.assert_array_equal(drawn["tpr"], np.array([0, 1, 2, 2, 3, 3, 3, 4, 4]) / 4)
    assert drawn["roc_auc"] == 12 / 16  # pairs with the calcified slice scored higher
    with Image.open(path) as png:
        assert png.size == tuple(round(v * roc_plot.DPI) for v in roc_plot.SIZE_IN)
        red = np.asarray(png.convert("RGB")).astype(int)
    # the marked point is drawn in red (tab:red is (214, 39, 40))
    assert ((abs(red - (214, 39, 40))).sum(axis=-1) < 30).sum() > 20


def test_one_class_draws_nothing(tmp_path):
    assert roc_plot.roc_png(SCORES, np.zeros(8, bool), 0.5, tmp_path / "r.png", "t") is None
    assert not (tmp_path / "r.png").exists()
    assert roc_plot.operating_point(SCORES, LABELS, 1.0) == (0.0, 0.0)
