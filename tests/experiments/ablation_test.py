"""Tests for experiments/ablation.py and experiments/stages.py.

1. End to end through ``tools/ablate.py --config configs/ablation.py:tiny`` (subprocesses
   sharing a compilation cache): an uninterrupted run, and a run whose DINO pretraining
   is made NaN at step 4 (so it stops with its step-2 checkpoint) and is then re-run:
   the re-run resumes that checkpoint (steps 3 and 4 are logged again, not 1 and 2),
   and both runs end with byte-identical ``results.json`` (one seed, run twice). The
   numbers are checked against the dataset's own truth (the manifest's calcified
   slices, the phantom's truth.json totals), and a third call skips every stage.
2. Small pieces: mean/spread over seeds, the config-mismatch guard, per-arm crop counts.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from dinolg_jax.experiments import ablation, stages
from dinolg_jax.runtime.json_file import write_json

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "ablate.py"
CONFIG = ROOT / "configs" / "ablation.py"


def tiny_config():
    spec = importlib.util.spec_from_file_location("ablation_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("tiny")


def _run(workdir, cache, *overrides):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    cmd = [sys.executable, str(TOOL), f"--config={CONFIG}:tiny", f"--workdir={workdir}"]
    return subprocess.run(
        [*cmd, *overrides], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )


def _steps(path):
    return [json.loads(line)["step"] for line in Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_ablation_is_deterministic_resumes_exactly_and_skips_finished_stages(tmp_path):
    cache = tmp_path / "jax_cache"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    run = _run(straight, cache)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "report:" in run.stdout

    # Interrupted: the loss of the first arm's pretraining turns NaN in step 4.
    bad = _run(resumed, cache, "--config.pretrain.debug.nan_at_step=3")
    assert bad.returncode == 1
    assert "non-finite loss (nan) at step 4" in bad.stderr
    pre = resumed / "seed0" / "dino" / "pretrain"
    assert (resumed / "seed0" / "segment" / "summary.json").is_file()  # finished before
    assert not (pre / "summary.json").exists() and not (resumed / "results.json").exists()
    assert sorted(int(p.name) for p in (pre / "checkpoints").iterdir()) == [2]

    again = _run(resumed, cache)  # same config without the fault: resumes
    assert again.returncode == 0, again.stderr[-3000:]
    assert _steps(pre / "metrics.jsonl") == [1, 2, 3, 3, 4]  # resumed from step 2
    text_a = (straight / "results.json").read_text()
    assert (resumed / "results.json").read_text() == text_a  # every number, bitwise
    results = json.loads(text_a)

    # The numbers against the dataset's own truth.
    manifest = json.loads((straight / "data" / "records" / "manifest.json").read_text())
    test_ids = [s for s, e in manifest["studies"].items() if e["split"] == "test"]
    n_test = manifest["splits"]["test"]["num_records"]
    n_pos = manifest["splits"]["test"]["num_positive"]
    truth = json.loads((straight / "data" / "phantom" / "release" / "truth.json").read_text())
    assert results["arms"] == {
        "random_init": {"n_local_random": 0, "n_local_guided": 0, "pretrained": False},
        "dino": {"n_local_random": 2, "n_local_guided": 0},
        "dinolg": {"n_local_random": 1, "n_local_guided": 1},
        "supervised": {
            "n_local_random": 0,
            "n_local_guided": 0,
            "pretrained": False,
            "supervised": True,
        },
    }
    assert (results["control"], results["ceiling"]) == ("random_init", "supervised")
    control = results["runs"]["0"]["random_init"]
    t = control["probe"]["test"]
    assert t["tp"] + t["fn"] == n_pos and t["tn"] + t["fp"] == n_test - n_pos
    assert "gated" not in control and control["pretrain"]["step"] == 0
    ceiling = results["runs"]["0"]["supervised"]  # the init, trained 3 steps on the labels
    t = ceiling["probe"]["test"]
    assert t["tp"] + t["fn"] == n_pos and t["tn"] + t["fp"] == n_test - n_pos
    assert "gated" not in ceiling and ceiling["pretrain"]["step"] == 3
    sup = json.loads((straight / "seed0" / "supervised" / "pretrain" / "config.json").read_text())
    init = straight / "seed0" / "random_init" / "pretrain"
    assert sup["init_encoder"] == str(init.absolute())  # starts from the control's encoder
    assert _steps(straight / "seed0" / "supervised" / "pretrain" / "metrics.jsonl") == [1, 2, 3]
    for arm in ("random_init", "dino", "dinolg", "supervised"):
        # every calcified test slice has a calcium patch; the ratio is a positive number
        att = results["runs"]["0"][arm]["attention"]
        assert att["n_slices"] == n_pos and att["split"] == "test" and att["mean"] > 0
        assert results["aggregate"][arm]["attn_calcium_ratio"]["mean"] == att["mean"]
        # The dense probe scored the probe's own test slices and carried its number through.
        dense = results["runs"]["0"][arm]["probe"]["patch"]
        probe_sum = json.loads((straight / "seed0" / arm / "probe" / "summary.json").read_text())
        assert dense["test_patch_roc_auc"] == probe_sum["patch"]["test"]["patch_roc_auc"]
        agg_dense = results["aggregate"][arm]["patch_probe_roc_auc"]
        assert agg_dense["mean"] == dense["test_patch_roc_auc"]
    for arm in ("dino", "dinolg"):
        run_ = results["runs"]["0"][arm]
        t = run_["probe"]["test"]
        assert t["tp"] + t["fn"] == n_pos and t["tn"] + t["fp"] == n_test - n_pos
        assert run_["unet_only"]["segmented_slices"] == n_test  # every slice
        assert run_["gated"]["segmented_slices"] <= n_test
        assert sorted(run_["gated"]["pred_totals"]) == sorted(test_ids)
        agg = results["aggregate"][arm]
        assert agg["probe_f1"]["n"] in (0, 1) and agg["probe_f1"]["std"] is None
        assert agg["probe_f1"]["mean"] == t["f1"]
        assert agg["probe_confusion"] == [[t["tn"], t["fp"]], [t["fn"], t["tp"]]]
    # Both arms share the seed's U-Net: identical U-Net-only predictions.
    runs = results["runs"]["0"]
    assert runs["dino"]["unet_only"] == runs["dinolg"]["unet_only"]
    assert (
        runs["dino"]["pretrain"]["params_checksum"] != runs["dinolg"]["pretrain"]["params_checksum"]
    )
    infer = json.loads((straight / "seed0" / "dinolg" / "infer" / "summary.json").read_text())
    for row in infer["patients"]:
        pid = str(int(row["study"].split("-")[1]))
        assert row["true_total"] == pytest.approx(truth["gated"][pid]["total"], abs=1e-3)
    report = (straight / "report" / "report.md").read_text()
    assert "Calcified-slice probe" in report and "(Fig. 6)" in report and "(Table 6)" in report
    assert "attn_calcium_ratio" in report and "random_init" in report
    room = ceiling["probe"]["test"]["roc_auc"] - control["probe"]["test"]["roc_auc"]
    assert f"supervised − random_init probe roc_auc: {room:+.3f}" in report
    assert ("no headroom" in report) == (room < 0.15) == ("no headroom" in run.stdout)
    assert ("this run cannot decide" in report) == (room < 0.15)
    assert report.index("## Can this run decide?") < report.index("Calcified-slice probe")
    # the CNN yardstick, the paired comparisons with intervals and the gate's effect
    base = results["baseline"]
    assert 0.0 <= base["cnn_roc_auc"] <= 1.0 and 0.0 <= base["cnn_val_roc_auc"] <= 1.0
    assert sorted(results["comparisons"]) == [
        "dino_vs_random_init",
        "dinolg_vs_dino",
        "dinolg_vs_random_init",
    ]
    for entry in results["comparisons"].values():
        for metric in ("probe_roc_auc", "patch_probe_roc_auc", "attn_calcium_ratio"):
            d = entry[metric]
            assert d["n_seeds"] == 1 and d["ci95"][0] <= d["ci95"][1]
    d = results["comparisons"]["dinolg_vs_dino"]["probe_roc_auc"]
    want = runs["dinolg"]["probe"]["test"]["roc_auc"] - runs["dino"]["probe"]["test"]["roc_auc"]
    assert d["diff"] == pytest.approx(want, abs=1e-9)
    from dinolg_jax.scoring.agatston import risk_category

    gated, alone = (
        runs["dinolg"]["gated"]["pred_totals"],
        runs["dinolg"]["unet_only"]["pred_totals"],
    )
    assert runs["dinolg"]["gate"] == {
        "patients": len(gated),
        "risk_changed": sum(
            risk_category(gated[k], "paper4") != risk_category(alone[k], "paper4") for k in gated
        ),
        "lost_calcified": sum(alone[k] > 0 and gated[k] == 0 for k in gated),
    }
    gain = (
        results["runs"]["0"]["dinolg"]["probe"]["patch"]["test_patch_roc_auc"]
        - control["probe"]["patch"]["test_patch_roc_auc"]
    )
    assert "Dense probe" in report
    assert f"dinolg − random_init probe patch roc_auc: {gain:+.3f}" in report
    assert (straight / "report" / "fig6_probe_confusion.png").stat().st_size > 0
    hist = results["baseline"]["hu_histogram"]  # the yardstick scores the same test slices
    assert (hist["test_slices"], hist["test_calcified"]) == (n_test, n_pos)
    assert f"test {hist['test_roc_auc']:.3f}" in report and "Yardstick" in report

    # A third call finds every stage finished: nothing is recomputed.
    stamps = {p: p.stat().st_mtime_ns for p in straight.glob("**/summary.json")}
    third = ablation.run_ablation(tiny_config(), straight, log=lambda _: None)
    assert third == results
    assert {p: p.stat().st_mtime_ns for p in straight.glob("**/summary.json")} == stamps


def test_mean_spread_is_the_sample_mean_and_sd_of_defined_values():
    out = ablation.mean_spread([1.0, 2.0, None, 4.0])
    mean = 7 / 3
    sd = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(mean, rel=1e-12)
    assert out["std"] == pytest.approx(sd, rel=1e-12)
    assert ablation.mean_spread([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert ablation.mean_spread([None]) == {"mean": None, "std": None, "n": 0}


def test_arm_configs_differ_only_in_crop_counts_and_seed():
    c = tiny_config()
    dino = ablation.arm_pretrain_config(c, "dino", 0).to_dict()
    lg = ablation.arm_pretrain_config(c, "dinolg", 5).to_dict()
    assert (dino["data"]["n_local_random"], dino["data"]["n_local_guided"]) == (2, 0)
    assert (lg["data"]["n_local_random"], lg["data"]["n_local_guided"]) == (1, 1)
    assert (lg["seed"], lg["data"]["seed"]) == (5, 5)
    for d in (dino, lg):
        d.pop("seed")
        for k in ("n_local_random", "n_local_guided", "seed"):
            d["data"].pop(k)
    assert dino == lg
    with pytest.raises(KeyError, match="unknown arm"):
        ablation.arm_pretrain_config(c, "ibot", 0)
    c.arms = {"dino": 0, "dinolg": 3}
    with pytest.raises(ValueError, match="guided crops"):
        ablation.arm_pretrain_config(c, "dinolg", 0)


def test_stage_refuses_a_workdir_of_another_config_and_skips_a_finished_one(tmp_path):
    config = ml_collections.ConfigDict({"n": 1, "debug": {"x": 0}})
    write_json(tmp_path / "config.json", config.to_dict())
    stages.check_config(tmp_path, ml_collections.ConfigDict({"n": 1, "debug": {"x": 9}}))
    with pytest.raises(stages.StageConfigError, match=r"differs in \['n'\]"):
        stages.check_config(tmp_path, ml_collections.ConfigDict({"n": 2, "debug": {"x": 0}}))
    assert stages.done_summary(tmp_path) is None
    write_json(tmp_path / "summary.json", {"status": "preempted", "step": 3})
    assert stages.done_summary(tmp_path) is None
    write_json(tmp_path / "summary.json", {"status": "done", "step": 4})
    assert stages.done_summary(tmp_path) == {"status": "done", "step": 4}


def test_headroom_is_the_mean_paired_ceiling_minus_floor_and_warns_below_0_15():
    from dinolg_jax.experiments import ablation_report

    def runs(pairs):
        out = {}
        for seed, (lo, hi) in enumerate(pairs):
            out[str(seed)] = {
                arm: {"probe": {"test": {"roc_auc": v}}}
                for arm, v in (("random_init", lo), ("supervised", hi))
            }
        return {"control": "random_init", "ceiling": "supervised", "runs": out}

    wide = runs([(0.5, 0.9), (0.6, 0.7)])  # differences 0.4 and 0.1
    assert ablation_report.headroom(wide) == pytest.approx(0.25)
    assert not any("no headroom" in x for x in ablation_report._headroom_lines(wide))
    narrow = runs([(0.5, 0.62), (0.6, None)])  # seed 1 undefined: only seed 0 counts
    assert ablation_report.headroom(narrow) == pytest.approx(0.12)
    assert any("no headroom" in x for x in ablation_report._headroom_lines(narrow))
    assert ablation_report.headroom({**wide, "ceiling": None}) is None
