"""DINO vs DINO-LG: the same data and seeds, differing only in the guided-crop count.

For every seed ``s`` in ``config.seeds`` and every arm (``config.arms``: name -> number of
label-guided local crops, the rest of ``config.n_local`` being random crops)::

    pretrain (seed s, the arm's crops) -> probe on the frozen encoder -> integrated
    scoring (gate = that probe, U-Net of seed s) of the test split; attn_calcium_ratio
    of the encoder on the test split's calcified slices (``eval.attention``)

and, when ``config.control`` names it (``"random_init"``), the control arm: the seed's
random-initialised encoder (what every arm starts from) -> the same probe and attention
ratio, no pretraining and no integrated scoring; when ``config.ceiling`` names it
(``"supervised"``), the ceiling arm: that same initial encoder trained on the train
split's slice labels (``train.supervised``, ``config.supervised``) -> the same probe and
attention ratio. The control is the floor and the ceiling the most an encoder of this
size reads of calcium at this scale: a pretraining arm is read between the two.

The data (one phantom, or ``config.data_manifest``) and the U-Net of a seed are shared by
the arms (the plain U-Nets do not use the pretrained encoder; ``vit_unet`` does, and is
then trained per arm), so the arms differ only in their encoder, hence in their gate.

Layout under the workdir (every stage resumable, see ``experiments.stages``)::

    data/phantom, data/records          the shared dataset
    seed<s>/segment                     the seed's U-Net (or seed<s>/<arm>/segment)
    seed<s>/<arm>/{pretrain,probe,infer,attention}
    seed<s>/random_init/{pretrain,probe,attention}   the control (no infer)
    seed<s>/supervised/{pretrain,probe,attention}    the ceiling (no infer)
    results.json                        every number of the report (no timings)
    timings.json                        wall times of the stages
    report/report.md (+ PNG figures)    the report

``results.json`` is a function of the config alone: re-running with the same config
and seeds reproduces it byte for byte on CPU (and on GPU with XLA's deterministic
ops, see ``configs/ablation.py``), whether the run was interrupted or not.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from dinolg_jax.experiments import stages
from dinolg_jax.runtime.json_file import write_json
from dinolg_jax.scoring.agatston import VESSELS, risk_category

RESULTS = "results.json"
TIMINGS = "timings.json"


def arm_pretrain_config(
    config: ml_collections.ConfigDict, arm: str, seed: int
) -> ml_collections.ConfigDict:
    """The pretraining config of one (arm, seed): only crop counts and seeds change."""
    if arm not in config.arms:
        raise KeyError(f"unknown arm {arm!r}; configured: {sorted(config.arms)}")
    guided = int(config.arms[arm])
    if not 0 <= guided <= int(config.n_local):
        raise ValueError(f"arm {arm}: {guided} guided crops not in [0, n_local={config.n_local}]")
    c = stages.seeded(config.pretrain, seed)
    c.data.n_local_guided = guided
    c.data.n_local_random = int(config.n_local) - guided
    return c


def arm_supervised_config(
    config: ml_collections.ConfigDict, seed: int
) -> ml_collections.ConfigDict:
    """The ``train.supervised`` config of the ceiling arm for one seed.

    The encoder reads its slices as the probe does (the probe's ``data`` window and size,
    ``features.pooling`` and ``n_last_blocks``, mesh); ``config.supervised`` gives the
    target (slice or patch labels), batch, the stream's calcified share, augmentation,
    optimiser and log interval.
    """
    sup = config.supervised
    c = ml_collections.ConfigDict()
    c.seed = int(seed)
    c.target = str(sup.target)  # "slice" or "patch" labels (train.supervised)
    c.init_encoder = ""  # set by stages.supervised_encoder
    c.data = ml_collections.ConfigDict(config.probe.data.copy_and_resolve_references().to_dict())
    c.data.seed = int(seed)
    c.splits = config.probe.splits.copy_and_resolve_references()  # the probe's splits
    c.data.batch_size = int(sup.batch_size)
    c.data.positive_fraction = float(sup.positive_fraction)
    c.data.augment = bool(sup.augment)
    c.data.global_size = int(config.pretrain.data.global_size)  # attn_calcium_ratio's size
    c.features = ml_collections.ConfigDict(
        {"pooling": str(config.probe.features.pooling),
         "n_last_blocks": int(config.probe.features.n_last_blocks)}
    )  # fmt: skip
    c.optim = ml_collections.ConfigDict(sup.optim.copy_and_resolve_references().to_dict())
    c.mesh = config.probe.mesh.copy_and_resolve_references()
    c.log_every = int(sup.log_every)
    c.tensorboard = False
    # checkpoints as the pretraining arms' (runtime.run: resume after an interruption)
    c.checkpoint = config.pretrain.checkpoint.copy_and_resolve_references()
    return c


def arm_cnn_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The ``train.cnn_baseline`` config: the ceiling's data, splits and schedule
    (:func:`arm_supervised_config`), ``config.cnn``'s channels and optimiser."""
    c = arm_supervised_config(config, seed)
    del c["init_encoder"], c["features"]
    c.channels = tuple(int(x) for x in config.cnn.channels)
    c.optim = ml_collections.ConfigDict(config.cnn.optim.copy_and_resolve_references().to_dict())
    return c


def prepare_data(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """The shared dataset's manifest: ``config.data_manifest`` or phantom -> convert."""
    if config.data_manifest:
        path = Path(config.data_manifest)
        return path / "manifest.json" if path.is_dir() else path
    data = Path(workdir) / "data"
    ph = stages.make_phantom(data / "phantom", config.phantom)
    conv = stages.convert_release(data / "records", ph["release"], config.convert)
    return Path(conv["manifest"])


def _clean(x: Any) -> Any:
    """JSON-safe copy with non-finite floats as None (so equal runs compare equal)."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _mode_numbers(ev: Mapping[str, Any]) -> dict[str, Any]:
    """The Table 6 / Fig. 8 / agreement numbers of one mode's evaluation."""
    if "presence" not in ev:
        return {"patients": len(ev.get("studies", []))}
    presence = {
        v: {k: ev["presence"][v][k] for k in ("precision", "recall", "f1")}
        for v in (*VESSELS, "mean")
    }
    risk = ev["risk"]["paper4"]
    agree = ev["agreement"]
    return {
        "patients": len(ev["studies"]),
        "presence": presence,
        "risk_paper4": {
            "classes": risk["classes"],
            "confusion": risk["confusion"],
            "accuracy": risk["accuracy"],
            "kappa_linear": risk["kappa_linear"],
        },
        "agreement": {k: agree[k] for k in ("icc", "pearson", "spearman")},
    }


def run_numbers(
    pre: Mapping[str, Any],
    probe: Mapping[str, Any],
    infer: Mapping[str, Any] | None,
    attention: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The deterministic numbers of one (seed, arm) chain (no wall times).

    ``infer`` is None for the control arm; ``attention`` is the attention stage's summary.
    """
    test = probe["test"]
    out: dict[str, Any] = {
        "pretrain": {
            "step": pre["step"],
            "final_loss": pre["metrics"].get("loss"),
            "params_checksum": pre["params_checksum"],
        },
        "probe": {
            "threshold": probe["threshold"],
            "test": {k: test.get(k) for k in ("tp", "tn", "fp", "fn")}
            | {k: test.get(k) for k in ("precision", "recall", "specificity", "f1", "roc_auc")},
            "val_f1": probe["val"].get("f1"),
            "params_checksum": probe["params_checksum"],
        },
    }
    patch = probe.get("patch")
    if patch:  # the dense probe (eval.patch_probe) on the same cached tokens
        out["probe"]["patch"] = {
            "test_patch_roc_auc": patch["test"]["patch_roc_auc"],
            "test_slice_roc_auc": patch["test"]["slice_roc_auc"],
            "val_patch_roc_auc": patch["val"]["patch_roc_auc"],
        }
    if attention is not None:
        out["attention"] = {k: attention[k] for k in ("mean", "per_head", "n_slices", "split")}
    health = pre.get("health") or {}
    if health.get("online_eval_init"):
        out["pretrain"]["online"] = {
            k: pre["metrics"].get(f"online_{k}_roc_auc") for k in ("knn", "probe")
        }
        out["pretrain"]["warnings"] = health.get("warnings", [])
    if infer is None:
        return _clean(out)
    rows = infer["patients"]
    for mode, ev in infer["evals"].items():
        out[mode] = _mode_numbers(ev)
        mine = [r for r in rows if r["mode"] == mode and r["error"] is None]
        out[mode]["segmented_slices"] = sum(r["num_flagged"] for r in mine)
        out[mode]["slices"] = sum(r["num_slices"] for r in mine)
        out[mode]["pred_totals"] = {r["study"]: r["pred_total"] for r in mine}
    if "gated" in out and "unet_only" in out:
        out["gate"] = _gate_effect(out["gated"]["pred_totals"], out["unet_only"]["pred_totals"])
    return _clean(out)


def _gate_effect(gated: Mapping[str, float], alone: Mapping[str, float]) -> dict[str, int]:
    """What the gate changes against the U-Net alone, per test patient (predicted totals):
    ``risk_changed`` (paper4 category differs), ``lost_calcified`` (the U-Net alone finds
    calcium, the gated system none), out of ``patients``."""
    both = sorted(set(gated) & set(alone))
    cat = functools.partial(risk_category, scheme="paper4")
    return {
        "patients": len(both),
        "risk_changed": sum(cat(gated[s]) != cat(alone[s]) for s in both),
        "lost_calcified": sum(alone[s] > 0 and gated[s] == 0 for s in both),
    }


def scalar_metrics(run: Mapping[str, Any]) -> dict[str, float | None]:
    """Flat scalar metrics of one run (the quantities averaged over seeds)."""
    flat: dict[str, float | None] = {}
    t = run["probe"]["test"]
    for k in ("f1", "precision", "recall", "specificity", "roc_auc"):
        flat[f"probe_{k}"] = t[k]
    flat["probe_threshold"] = run["probe"]["threshold"]
    if "patch" in run["probe"]:
        flat["patch_probe_roc_auc"] = run["probe"]["patch"]["test_patch_roc_auc"]
        flat["patch_probe_slice_roc_auc"] = run["probe"]["patch"]["test_slice_roc_auc"]
    flat["pretrain_final_loss"] = run["pretrain"]["final_loss"]
    if "attention" in run:
        flat["attn_calcium_ratio"] = run["attention"]["mean"]
    for k, v in (run["pretrain"].get("online") or {}).items():
        flat[f"online_{k}_roc_auc"] = v
    for mode in ("gated", "unet_only"):
        m = run.get(mode)
        if not m or "presence" not in m:
            continue
        for v in (*VESSELS, "mean"):
            for k in ("precision", "recall", "f1"):
                flat[f"{mode}_{k}_{v}"] = m["presence"][v][k]
        flat[f"{mode}_risk_accuracy"] = m["risk_paper4"]["accuracy"]
        flat[f"{mode}_risk_kappa_linear"] = m["risk_paper4"]["kappa_linear"]
        flat[f"{mode}_icc"] = m["agreement"]["icc"]
        flat[f"{mode}_segmented_fraction"] = (
            m["segmented_slices"] / m["slices"] if m["slices"] else None
        )
    if "gated" in run:  # the gate is the probe at its threshold, on the same test slices
        flat["gate_slice_recall"] = t["recall"]
    if "gate" in run:
        flat["gate_risk_changed"] = run["gate"]["risk_changed"]
        flat["gate_lost_calcified"] = run["gate"]["lost_calcified"]
    return flat


def mean_spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1) of the defined values; n counts them."""
    vals = np.asarray([v for v in values if v is not None], np.float64)
    n = int(vals.size)
    return {
        "mean": float(vals.mean()) if n else None,
        "std": float(vals.std(ddof=1)) if n > 1 else None,
        "n": n,
    }


def aggregate(runs: Mapping[str, Mapping[str, Any]], arms: Sequence[str]) -> dict[str, Any]:
    """Per arm: mean/spread of every scalar over seeds and confusion matrices summed.

    Args:
      runs: {str(seed): {arm: run_numbers(...)}}.
      arms: arm names.
    """
    out: dict[str, Any] = {}
    for arm in arms:
        per_seed = [runs[s][arm] for s in sorted(runs, key=int) if arm in runs[s]]
        flats = [scalar_metrics(r) for r in per_seed]
        keys = sorted({k for f in flats for k in f})
        entry: dict[str, Any] = {k: mean_spread([f.get(k) for f in flats]) for k in keys}
        probe_cm = np.zeros((2, 2), np.int64)
        for r in per_seed:
            t = r["probe"]["test"]
            probe_cm += np.array([[t["tn"], t["fp"]], [t["fn"], t["tp"]]], np.int64)
        entry["probe_confusion"] = probe_cm.tolist()
        for mode in ("gated", "unet_only"):
            cms = [
                r[mode]["risk_paper4"]["confusion"]
                for r in per_seed
                if "risk_paper4" in r.get(mode, {})
            ]
            if cms:
                entry[f"{mode}_risk_confusion"] = np.sum(np.asarray(cms, np.int64), axis=0).tolist()
        out[arm] = entry
    return _clean(out)


@dataclass
class _Clock:
    """Times the stages: ``timings[name]`` is a stage's wall time in seconds (to the ms)."""

    log: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """Runs ``fn(*args)``, records and logs its wall time under ``name``; returns its result."""
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.log(f"[{name}] {self.timings[name]:.1f} s")
        return out


@dataclass(frozen=True)
class _Plan:
    """What every stage of one ablation reads, fixed before the first seed runs."""

    config: ml_collections.ConfigDict
    workdir: Path
    manifest: Path  # the shared dataset's manifest
    arms: list[str]  # the pretraining arms, sorted
    control: str  # the control arm's name; "" without one
    ceiling: str  # the ceiling arm's name; "" without one
    split: str  # the split the attention ratio is measured on
    per_arm_unet: bool  # vit_unet reads the encoder: one U-Net per arm, not per seed
    timed: _Clock


def _extra_arms(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """The (control, ceiling) arm names, "" where absent.

    Raises:
      ValueError: when either names a pretraining arm or both name the same arm.
    """
    control = str(config.control or "")
    if control and control in config.arms:
        raise ValueError(f"control arm {control!r} also names a pretraining arm")
    ceiling = str(config.ceiling or "")
    if ceiling and (ceiling in config.arms or ceiling == control):
        raise ValueError(f"ceiling arm {ceiling!r} also names another arm")
    return control, ceiling


def _baselines(plan: _Plan) -> dict[str, Any]:
    """The encoder-free yardsticks on the first seed, when configured: ``hu_histogram``
    (``eval.hu_baseline``) and ``cnn_roc_auc`` / ``cnn_val_roc_auc`` (a small supervised
    CNN, ``train.cnn_baseline``: the signal in the data)."""
    config, out = plan.config, {}
    seed0 = int(config.seeds[0])
    if config.hu_baseline:
        from dinolg_jax.eval import hu_baseline

        out["hu_histogram"] = plan.timed("hu_baseline", hu_baseline.hu_histogram_baseline,
                                         plan.manifest, config.probe.optim, seed0)  # fmt: skip
    if config.cnn.enabled:
        cnn = plan.timed("cnn_baseline", stages.cnn_baseline, plan.workdir / "cnn_baseline",
                         arm_cnn_config(config, seed0), plan.manifest)  # fmt: skip
        out["cnn_roc_auc"] = cnn["test_roc_auc"]
        out["cnn_val_roc_auc"] = cnn["val_roc_auc"]
    return out


def _comparisons(plan: _Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """``results["comparisons"]`` (``experiments.ablation_comparisons``)."""
    from dinolg_jax.experiments import ablation_comparisons as comp

    guided = {a: int(plan.config.arms[a]) for a in plan.arms}
    arm_pairs = comp.pairs(plan.arms, guided, plan.control)
    studies = comp.record_studies(plan.manifest, str(plan.config.probe.splits.test))
    c = plan.config.comparisons
    return comp.compare(plan.workdir, [int(s) for s in plan.config.seeds], arm_pairs, studies,
                        n_boot=int(c.n_boot), seed=int(c.seed), log=log)  # fmt: skip


def _read_out(
    plan: _Plan, d: Path, name: str, probe_cfg: ml_collections.ConfigDict
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The frozen probe and the attention ratio of the encoder in ``d/pretrain``."""
    probe = plan.timed(f"{name}/probe", stages.train_probe, d / "probe", probe_cfg, plan.manifest,
                       d / "pretrain")  # fmt: skip
    attn = plan.timed(f"{name}/attention", stages.measure_attention, d / "attention",
                      d / "pretrain", plan.manifest, plan.split)  # fmt: skip
    return probe, attn


def _control_run(
    plan: _Plan, root: Path, seed: int, probe_cfg: ml_collections.ConfigDict
) -> dict[str, Any]:
    """The control arm of one seed: its random-initialised encoder, read out (no infer)."""
    d, name = root / plan.control, f"seed{seed}/{plan.control}"
    init_cfg = arm_pretrain_config(plan.config, plan.arms[0], seed)  # crops do not enter the init
    pre = plan.timed(f"{name}/init", stages.initial_encoder, d / "pretrain", init_cfg,
                     plan.manifest)  # fmt: skip
    probe, attn = _read_out(plan, d, name, probe_cfg)
    return run_numbers(pre, probe, None, attn)


def _ceiling_run(
    plan: _Plan, root: Path, seed: int, probe_cfg: ml_collections.ConfigDict
) -> dict[str, Any]:
    """The ceiling arm of one seed: the random init (the control's when there is one)
    trained on the slice labels, read out (no infer)."""
    d, name = root / plan.ceiling, f"seed{seed}/{plan.ceiling}"
    init = root / plan.control / "pretrain"
    if not plan.control:
        init = d / "init"
        init_cfg = arm_pretrain_config(plan.config, plan.arms[0], seed)
        plan.timed(f"{name}/init", stages.initial_encoder, init, init_cfg, plan.manifest)
    sup = plan.timed(f"{name}/train", stages.supervised_encoder, d / "pretrain",
                     arm_supervised_config(plan.config, seed), plan.manifest, init)  # fmt: skip
    probe, attn = _read_out(plan, d, name, probe_cfg)
    return run_numbers(sup, probe, None, attn)


def _pretrained_run(
    plan: _Plan,
    root: Path,
    seed: int,
    arm: str,
    probe_cfg: ml_collections.ConfigDict,
    seg_cfg: ml_collections.ConfigDict,
) -> dict[str, Any]:
    """One pretraining arm of one seed: pretrain, read out, (its own U-Net,) infer."""
    d = root / arm
    name = f"seed{seed}/{arm}"
    pre_cfg = arm_pretrain_config(plan.config, arm, seed)
    pre = plan.timed(
        f"{name}/pretrain", stages.pretrain_encoder, d / "pretrain", pre_cfg, plan.manifest
    )
    encoder = d / "pretrain"
    probe, attn = _read_out(plan, d, name, probe_cfg)
    seg_dir = root / "segment"
    if plan.per_arm_unet:
        seg_dir = d / "segment"
        plan.timed(
            f"{name}/segment", stages.train_segmenter, seg_dir, seg_cfg, plan.manifest, encoder
        )
    infer = plan.timed(
        f"{name}/infer",
        stages.infer,
        d / "infer",
        plan.config.infer,
        plan.manifest,
        d / "probe",
        seg_dir,
    )
    return run_numbers(pre, probe, infer, attn)


def _seed_runs(plan: _Plan, seed: int) -> dict[str, Any]:
    """{arm: run_numbers} of one seed: its shared U-Net first, then the control, the
    ceiling and the pretraining arms, in that order."""
    root = plan.workdir / f"seed{seed}"
    seg_cfg = stages.seeded(plan.config.segment, seed)
    if not plan.per_arm_unet:
        plan.timed(f"seed{seed}/segment", stages.train_segmenter, root / "segment", seg_cfg,
                   plan.manifest)  # fmt: skip
    runs: dict[str, Any] = {}
    probe_cfg = stages.seeded(plan.config.probe, seed)
    if plan.control:
        runs[plan.control] = _control_run(plan, root, seed, probe_cfg)
    if plan.ceiling:
        runs[plan.ceiling] = _ceiling_run(plan, root, seed, probe_cfg)
    for arm in plan.arms:
        runs[arm] = _pretrained_run(plan, root, seed, arm, probe_cfg, seg_cfg)
    return runs


def _arm_crops(
    config: ml_collections.ConfigDict, arms: Sequence[str], control: str, ceiling: str
) -> dict[str, dict[str, Any]]:
    """results.json's ``arms``: every arm's local-crop counts; the control first, the
    ceiling last."""
    crops = {
        a: {
            "n_local_random": int(config.n_local) - int(config.arms[a]),
            "n_local_guided": int(config.arms[a]),
        }
        for a in arms
    }
    if control:
        crops = {control: {"n_local_random": 0, "n_local_guided": 0, "pretrained": False}} | crops
    if ceiling:
        crops[ceiling] = {"n_local_random": 0, "n_local_guided": 0, "pretrained": False,
                          "supervised": True}  # fmt: skip
    return crops


def _write_outputs(plan: _Plan, results: dict[str, Any], log: Callable[[str], None]) -> None:
    """Writes the report, results.json (with the report's path added) and timings.json,
    then warns when the ceiling leaves the control no headroom."""
    from dinolg_jax.experiments import ablation_report

    workdir = plan.workdir
    report = ablation_report.write(workdir / "report", results, plan.config)
    results["report"] = str(report.relative_to(workdir))
    write_json(workdir / RESULTS, results)
    write_json(workdir / TIMINGS, plan.timed.timings)
    room = ablation_report.headroom(results)
    if room is not None and room < ablation_report.HEADROOM_MIN:
        log(
            f"warning: no headroom: {plan.ceiling}'s probe ROC-AUC is {room:+.3f} from "
            f"{plan.control}'s, so the arms cannot differ at this scale (see the report)"
        )
    log(f"report: {report}")


def run_ablation(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs (or resumes) the whole ablation and writes results.json and the report.

    Args:
      config: ``configs/ablation.py``: ``seeds``, ``n_local``, ``arms``, ``control``,
        ``ceiling`` and ``supervised`` (its training), ``cnn`` (the CNN yardstick),
        ``comparisons`` (``n_boot``, ``seed``), ``attention_split``, ``phantom``
        and ``convert`` (the shared dataset, unless ``data_manifest`` names a converted
        one), ``pretrain`` / ``probe`` / ``segment`` (the configs of ``train.pretrain``,
        ``eval.probe``, ``train.segment``), ``infer`` (``stages.infer``), ``note``.
      workdir: output folder; re-running resumes every unfinished stage.
      log: progress lines (``print`` by default).

    Returns:
      The content of ``results.json``: ``arms`` (crop counts), ``seeds``, ``runs``
      {seed: {arm: run_numbers}}, ``aggregate`` {arm: metrics mean/std/n and summed
      confusion matrices}, ``comparisons`` {f"{a}_vs_{b}": {metric: diff, ci95, ...}}
      (``experiments.ablation_comparisons``), ``baseline`` (``hu_histogram``,
      ``cnn_roc_auc``, ``cnn_val_roc_auc`` when configured), ``report`` (relative path
      of the Markdown report).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", stages._plain(config))
    arms = sorted(config.arms)
    timed = _Clock(log)
    manifest = prepare_data(config, workdir)
    per_arm_unet = str(config.segment.model.name) == "vit_unet"
    control, ceiling = _extra_arms(config)
    split = str(config.attention_split)
    plan = _Plan(config, workdir, manifest, arms, control, ceiling, split, per_arm_unet, timed)
    baseline = _baselines(plan)
    runs = {str(seed): _seed_runs(plan, seed) for seed in (int(s) for s in config.seeds)}
    crops = _arm_crops(config, arms, control, ceiling)
    results = {
        "arms": crops,
        "control": control or None,
        "ceiling": ceiling or None,
        "seeds": [int(s) for s in config.seeds],
        "runs": runs,
        "aggregate": aggregate(runs, list(crops)),
        "comparisons": _clean(_comparisons(plan, log)),
    }
    if baseline:
        results["baseline"] = _clean(baseline)
    _write_outputs(plan, results, log)
    return results
