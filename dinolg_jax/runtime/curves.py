"""``curves.png``: a training run's metrics as one figure, one panel per quantity.

Read from ``metrics.jsonl`` (``runtime.metrics_log``), drawn with matplotlib's Agg backend
(no display). Panels, in this order, each only when the run logs it:

- ``loss``: the logged step's loss and the mean loss since the previous line;
- ``lr``: the learning rate;
- the DINO collapse monitors ``teacher_entropy``, ``teacher_batch_entropy``, ``teacher_kl``
  (nats; ``dino.loss.teacher_collapse_stats``);
- ``online_knn_roc_auc``, ``online_probe_roc_auc``: the online evaluation of the teacher
  (``eval.online_eval``), with the random-initialised encoder's score as a dashed line;
- ``accuracy``: a slice classifier's batch accuracy.

:func:`plot_curves` returns what it drew (per panel, per line, the steps and values), so
a test can check each panel's data against the log. ``runtime.run`` writes the figure at
each checkpoint and at the end of a run (process 0).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

CURVES = "curves.png"
COLUMNS = 3
PANEL_IN = (4.0, 2.8)  # inches per panel (width, height)
DPI = 100

# panel key -> (title, y label, [(line label, metric)], reference line metric or None)
PANELS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...], str | None], ...] = (
    ("loss", "loss", "loss", (("step", "loss"), ("window mean", "loss_window_mean")), None),
    ("lr", "learning rate", "lr", (("lr", "lr"),), None),
    ("teacher_entropy", "teacher entropy (per image)", "nats",
     (("entropy", "teacher_entropy"),), None),
    ("teacher_batch_entropy", "teacher batch entropy", "nats",
     (("batch entropy", "teacher_batch_entropy"),), None),
    ("teacher_kl", "teacher KL (batch vs image)", "nats", (("KL", "teacher_kl"),), None),
    ("online_knn_roc_auc", "online kNN ROC-AUC", "ROC-AUC",
     (("teacher", "online_knn_roc_auc"),), "init_knn_roc_auc"),
    ("online_probe_roc_auc", "online probe ROC-AUC", "ROC-AUC",
     (("teacher", "online_probe_roc_auc"),), "init_probe_roc_auc"),
    ("accuracy", "batch accuracy", "accuracy", (("accuracy", "accuracy"),), None),
)  # fmt: skip


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` as dicts; a line that does not parse (one cut by
    a crash mid-write) is skipped. A missing file gives []."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and isinstance(line.get("step"), int):
            lines.append(line)
    return lines


def _series(lines: list[dict[str, Any]], metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the lines that hold a finite number for ``metric``."""
    steps, values = [], []
    for line in lines:
        v = line.get(metric)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(int(line["step"]))
            values.append(float(v))
    return steps, values


def panel_data(
    lines: list[dict[str, Any]],
) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Per panel (only those with data), per line label, its (steps, values).

    The reference line (the random init's online score) is under ``"random init"``.
    """
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for key, _, _, series, reference in PANELS:
        drawn = {label: _series(lines, m) for label, m in series}
        drawn = {label: sv for label, sv in drawn.items() if sv[0]}
        if not drawn:
            continue
        if reference is not None:
            ref = _series(lines, reference)
            if ref[0]:
                drawn["random init"] = ref
        out[key] = drawn
    return out


def figure_size_px(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of the figure of ``n_panels`` panels."""
    cols = min(COLUMNS, max(n_panels, 1))
    rows = max(1, math.ceil(n_panels / COLUMNS))
    return round(cols * PANEL_IN[0] * DPI), round(rows * PANEL_IN[1] * DPI)


def plot_curves(
    lines: list[dict[str, Any]], out: str | os.PathLike, *, title: str = ""
) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Draws ``lines`` (``read_metrics``) into the PNG ``out`` (written atomically).

    Args:
      lines: metrics lines, each with an int ``step``.
      out: the PNG path; its size is :func:`figure_size_px` of the panel count.
      title: the figure's title (e.g. the workdir's name).

    Returns:
      What was drawn (:func:`panel_data`); {} and no file when no line has a loss or
      any other panel's metric.
    """
    data = panel_data(lines)
    if data:
        _draw(data, out, title)
    return data


def plot_overlay(
    runs: dict[str, list[dict[str, Any]]], out: str | os.PathLike, *, title: str = ""
) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Several runs' logs in one figure: per panel, each run's main line (the first
    series of :data:`PANELS`: the loss, not its window mean; the online scores, not the
    init's), labelled by run name, so runs compare at a glance (the ablation's arms).

    Args:
      runs: run name -> its metrics lines (``read_metrics``), in legend order.
      out: the PNG path (size :func:`figure_size_px` of the panel count).
      title: the figure's title.

    Returns:
      Per panel, per run, its (steps, values); {} and no file when nothing has data.
    """
    merged: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for key, _, _, series, _ in PANELS:
        metric = series[0][1]
        per_run = {name: _series(lines, metric) for name, lines in runs.items()}
        per_run = {name: sv for name, sv in per_run.items() if sv[0]}
        if per_run:
            merged[key] = per_run
    if merged:
        _draw(merged, out, title)
    return merged


def _draw(
    data: dict[str, dict[str, tuple[list[int], list[float]]]], out: str | os.PathLike, title: str
) -> None:
    """Draws panels of labelled lines into the PNG ``out`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    titles = {key: (t, y) for key, t, y, _, _ in PANELS}
    width, height = figure_size_px(len(data))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    try:
        rows = max(1, math.ceil(len(data) / COLUMNS))
        cols = min(COLUMNS, len(data))
        for i, (key, drawn) in enumerate(data.items()):
            ax = fig.add_subplot(rows, cols, i + 1)
            for label, (steps, values) in drawn.items():
                if label == "random init" and len(set(values)) == 1:  # a level: across
                    ax.axhline(values[0], linestyle="--", color="0.4", label=label)
                    continue
                style = {"linestyle": "--", "color": "0.4"} if label == "random init" else {}
                if len(steps) <= 30:  # few points (the online eval): each one visible
                    style["marker"] = "o"
                    style["markersize"] = 3
                ax.plot(steps, values, label=label, linewidth=1.2, **style)
            ax.set_title(titles[key][0], fontsize=10)
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel(titles[key][1], fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if key == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
            if len(drawn) > 1:
                ax.legend(fontsize=7)
        if title:
            fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        out = Path(out)
        tmp = out.with_name(out.name + ".tmp")
        fig.savefig(tmp, dpi=DPI, format="png", metadata={"Software": None})
        os.replace(tmp, out)
    finally:
        plt.close(fig)


def write_run_curves(workdir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``workdir/curves.png`` from ``workdir/metrics.jsonl`` (see :func:`plot_curves`)."""
    workdir = Path(workdir)
    lines = read_metrics(workdir / "metrics.jsonl")
    return plot_curves(lines, workdir / CURVES, title=workdir.name)
