"""The probe's ROC curve on one split as a PNG, with its decision threshold marked.

``roc_png(scores, labels, threshold, path, title)`` draws the ROC of ``scores`` against
``labels`` (``eval.metrics.roc_curve``: every distinct score a threshold, ``score >= t``
positive), the chance diagonal, and the operating point of ``threshold`` (the probe's,
chosen on val for its recall: ``eval.metrics.threshold_for_recall``) with its recall and
false-positive rate written beside it. The ``eval.probe`` run writes ``roc_val.png`` and
``roc_test.png`` this way. It returns what it drew, for tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dinolg_jax.eval import metrics as metrics_lib

SIZE_IN = (4.6, 4.4)  # inches
DPI = 120


def operating_point(scores: Any, labels: Any, threshold: float) -> tuple[float, float]:
    """(false-positive rate, recall) of ``score >= threshold`` on ``labels`` (both
    classes present)."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    predicted = s >= float(threshold)
    return float(predicted[~y].mean()), float(predicted[y].mean())


def roc_png(
    scores: Any, labels: Any, threshold: float, path: str | os.PathLike, title: str
) -> dict[str, Any] | None:
    """Writes the ROC PNG of one split; None (and no file) when ``labels`` hold one class.

    Args:
      scores: [N] probe scores (higher: calcium).
      labels: [N] bool, the slice has calcium.
      threshold: the probe's decision threshold (``score >= threshold``: calcium).
      path: the PNG to write (``round(SIZE_IN * DPI)`` pixels).
      title: e.g. ``"linear probe, val"``.

    Returns:
      ``{"fpr": [T+1], "tpr": [T+1], "point": (fpr, recall) at threshold, "roc_auc"}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    y = np.asarray(labels).ravel().astype(bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = metrics_lib.roc_curve(scores, y)
    point = operating_point(scores, y, threshold)
    auc = metrics_lib.roc_auc(scores, y)
    fig, ax = plt.subplots(figsize=SIZE_IN, dpi=DPI)
    try:
        ax.plot([0, 1], [0, 1], linestyle=":", color="0.6", linewidth=1, label="chance")
        ax.plot(fpr, tpr, drawstyle="steps-post", linewidth=1.5, label=f"ROC-AUC {auc:.3f}")
        ax.plot(*point, "o", color="tab:red", markersize=7,
                label=f"threshold {threshold:.3g}")  # fmt: skip
        ax.annotate(
            f"recall {point[1]:.3f}\nFPR {point[0]:.3f}",
            point,
            textcoords="offset points",
            xytext=(10, -28),
            fontsize=8,
            color="tab:red",
        )
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("recall (true-positive rate)")
        ax.set_title(f"{title} ({int(y.sum())} calcified / {y.size} slices)", fontsize=9)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(Path(path), dpi=DPI, metadata={"Software": None})
    finally:
        plt.close(fig)
    return {"fpr": fpr, "tpr": tpr, "point": point, "roc_auc": auc}
