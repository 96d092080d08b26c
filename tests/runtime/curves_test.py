"""runtime.curves: each panel holds exactly the logged steps and values; the PNG decodes."""

import json

import numpy as np
from PIL import Image

from dinolg_jax.runtime import curves


def _pretrain_lines():
    """A pretraining log: every line has the step metrics, every third the online eval."""
    lines = []
    for step in range(5, 55, 5):
        line = {"step": step, "loss": 10.0 / step, "loss_window_mean": 11.0 / step,
                "lr": 1e-4 * step, "teacher_entropy": 0.1 * step,
                "teacher_batch_entropy": 6.0, "teacher_kl": 0.5 + step / 100}  # fmt: skip
        if step % 15 == 0:
            line |= {"online_knn_roc_auc": 0.5 + step / 200, "init_knn_roc_auc": 0.55,
                     "online_probe_roc_auc": 0.6, "init_probe_roc_auc": 0.52}  # fmt: skip
        lines.append(line)
    return lines


def test_panels_hold_the_logged_steps_and_the_png_has_the_expected_size(tmp_path):
    lines = _pretrain_lines()
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines) + '{"step": 55, "lo'  # cut mid-write
    )
    drawn = curves.write_run_curves(tmp_path)
    assert list(drawn) == [
        "loss", "lr", "teacher_entropy", "teacher_batch_entropy", "teacher_kl",
        "online_knn_roc_auc", "online_probe_roc_auc",
    ]  # fmt: skip
    steps = list(range(5, 55, 5))
    assert drawn["loss"] == {
        "step": (steps, [10.0 / s for s in steps]),
        "window mean": (steps, [11.0 / s for s in steps]),
    }
    assert drawn["lr"]["lr"] == (steps, [1e-4 * s for s in steps])
    assert drawn["teacher_kl"]["KL"] == (steps, [0.5 + s / 100 for s in steps])
    assert drawn["online_knn_roc_auc"] == {
        "teacher": ([15, 30, 45], [0.575, 0.65, 0.725]),
        "random init": ([15, 30, 45], [0.55] * 3),
    }
    with Image.open(tmp_path / "curves.png") as png:
        assert png.format == "PNG"
        assert png.size == curves.figure_size_px(7) == (1200, 840)  # 3 columns, 3 rows
        pixels = np.asarray(png.convert("L"))
    assert pixels.std() > 10  # not a blank canvas


def test_only_the_logged_metrics_get_panels(tmp_path):
    lines = [{"step": s, "loss": 1.0 / s, "accuracy": 0.5 + s / 100, "eta_s": None}
             for s in (1, 2, 3)]  # fmt: skip
    lines.append({"step": 4, "loss": float("nan")})  # a non-finite value is not drawn
    drawn = curves.plot_curves(lines, tmp_path / "c.png", title="segment")
    assert list(drawn) == ["loss", "accuracy"]
    assert drawn["loss"] == {"step": ([1, 2, 3], [1.0, 0.5, 1 / 3])}
    with Image.open(tmp_path / "c.png") as png:
        assert png.size == curves.figure_size_px(2) == (800, 280)
    assert curves.plot_curves([], tmp_path / "none.png") == {}
    assert not (tmp_path / "none.png").exists()
    assert curves.read_metrics(tmp_path / "missing.jsonl") == []
