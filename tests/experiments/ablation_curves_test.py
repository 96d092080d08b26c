"""The ablation report's training-curves section: each arm's curves.png linked side by side,
the pretrained arms overlaid per panel with exactly their logged values."""

import json

from PIL import Image

from dinolg_jax.experiments import ablation_report
from dinolg_jax.runtime import curves


def _log(folder, losses, online=None):
    folder.mkdir(parents=True)
    lines = []
    for i, loss in enumerate(losses):
        line = {"step": 2 * (i + 1), "loss": loss, "teacher_kl": 0.1 * (i + 1)}
        if online is not None and i == len(losses) - 1:
            line |= {"online_knn_roc_auc": online, "init_knn_roc_auc": 0.5}
        lines.append(line)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    curves.write_run_curves(folder)


def test_the_arms_curves_side_by_side_and_overlaid(tmp_path):
    runs = tmp_path / "ablation"
    _log(runs / "seed3" / "dino" / "pretrain", [4.0, 3.0, 2.5], online=0.6)
    _log(runs / "seed3" / "dinolg" / "pretrain", [4.0, 2.0, 1.5], online=0.7)
    (runs / "seed3" / "random_init" / "pretrain").mkdir(parents=True)  # exported, not trained
    results = {
        "seeds": [3, 4],
        "arms": {"random_init": {"pretrained": False}, "dino": {}, "dinolg": {}},
    }
    out = runs / "report"
    out.mkdir(parents=True)
    lines = ablation_report._curves_lines(results, out, runs)
    assert lines[0] == "## Training curves (seed 3)"
    assert "| dino | dinolg |" in lines
    assert (
        "| ![dino](../seed3/dino/pretrain/curves.png) | "
        "![dinolg](../seed3/dinolg/pretrain/curves.png) |"
    ) in lines
    assert "![curves by arm](curves_arms.png)" in lines
    overlay = curves.plot_overlay(
        {arm: curves.read_metrics(runs / "seed3" / arm / "pretrain" / "metrics.jsonl")
         for arm in ("dino", "dinolg")},
        tmp_path / "again.png",
        title="pretrained arms, seed 3",
    )  # fmt: skip
    assert list(overlay) == ["loss", "teacher_kl", "online_knn_roc_auc"]
    assert overlay["loss"] == {"dino": ([2, 4, 6], [4.0, 3.0, 2.5]),
                               "dinolg": ([2, 4, 6], [4.0, 2.0, 1.5])}  # fmt: skip
    assert overlay["online_knn_roc_auc"] == {"dino": ([6], [0.6]), "dinolg": ([6], [0.7])}
    with Image.open(out / "curves_arms.png") as png:
        assert png.size == curves.figure_size_px(3)
    assert (out / "curves_arms.png").read_bytes() == (tmp_path / "again.png").read_bytes()
    assert ablation_report._curves_lines({"seeds": [9], "arms": {"dino": {}}}, out, runs) == []
