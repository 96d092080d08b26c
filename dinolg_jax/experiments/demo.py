"""The demo: the whole system on the synthetic phantom, at CPU size, in one call.

``run_demo(workdir, config)`` runs, with ``config`` from ``configs/demo.py`` (the values
live there), each stage resumable in its own folder under ``workdir``
(``experiments.stages``)::

    data/phantom   a COCA-format phantom release (gated patients with calcium XML)
    data/records   its conversion: ArrayRecord shards, manifest.json, splits
    pretrain       DINO-LG pretraining of the nano/8 ViT (150 steps, CPU size)
    probe          the calcified-slice probe on the frozen teacher backbone
    segment        the U-Net, trained on the train split
    infer          integrated scoring of the test patients (gate -> U-Net -> Agatston),
                   U-Net-only scoring beside it, and infer/out/report/report.md

and returns (and prints) a per-patient table of true vs predicted Agatston scores and
risk categories. It is a demo-size run: a tiny ViT trained for minutes on a few dozen
synthetic patients, so its numbers say that the pipeline works end to end, not how
well the method works.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from dinolg_jax.experiments import stages


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def patient_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the integrated system's per-patient results.

    Args:
      rows: ``stages.infer`` summary ``patients`` (both modes; U-Net only is a column).
    """
    unet = {r["study"]: r for r in rows if r["mode"] == "unet_only"}
    gated = [r for r in rows if r["mode"] == "gated"]
    head = (
        f"{'patient':<12} {'slices':>6} {'gated':>5}  {'true Agatston':>13} {'category':<10}"
        f"  {'predicted':>10} {'category':<10}  {'U-Net only':>10}"
    )
    lines = [head, "-" * len(head)]
    agree = 0
    for r in gated:
        if r["error"]:
            lines.append(f"{r['study']:<12} error: {r['error']}")
            continue
        agree += r["true_category"] == r["pred_category"]
        u = unet.get(r["study"], {})
        lines.append(
            f"{r['study']:<12} {r['num_slices']:>6} {r['num_flagged']:>5}  "
            f"{_num(r['true_total']):>13} {r['true_category']:<10}  "
            f"{_num(r['pred_total']):>10} {r['pred_category']:<10}  "
            f"{_num(u.get('pred_total')):>10}"
        )
    ok = sum(1 for r in gated if not r["error"])
    lines.append(f"risk category (paper4) agrees for {agree} of {ok} test patients")
    lost = gate_losses(rows)
    if lost:
        lines.append(
            f"the gate lost {len(lost)} calcified patient(s) the U-Net alone finds "
            f"({', '.join(lost)}): every calcified slice of them scored below the probe's "
            "threshold, so none was segmented"
        )
    else:
        lines.append("the gate lost no calcified patient that the U-Net alone finds")
    sent = sum(r["num_flagged"] for r in gated if not r["error"])
    total = sum(r["num_slices"] for r in gated if not r["error"])
    if total and sent / total > GATE_PASS_ALL:
        lines.append(
            f"the gate sent {sent} of {total} slices to the U-Net: at demo size it does not "
            "filter yet (the ablation, tools/ablate.py, measures when it does)"
        )
    return "\n".join(lines)


GATE_PASS_ALL = 0.9  # share of slices segmented above which the demo says the gate is open


def gate_losses(rows: list[dict[str, Any]]) -> list[str]:
    """Patients with calcium that the U-Net alone scores above 0 but the gated system at 0.

    Args:
      rows: ``stages.infer`` summary ``patients`` (both modes).
    """
    unet = {r["study"]: r for r in rows if r["mode"] == "unet_only" and not r["error"]}
    lost = []
    for r in rows:
        u = unet.get(r["study"])
        if r["mode"] != "gated" or r["error"] or u is None:
            continue
        if (r["true_total"] or 0) > 0 and (u["pred_total"] or 0) > 0 and not r["pred_total"]:
            lost.append(r["study"])
    return lost


def run_demo(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    *,
    log: Callable[[str], None] = print,
) -> str:
    """Phantom -> convert -> DINO-LG pretraining -> probe -> U-Net -> integrated scoring.

    Args:
      workdir: output folder; re-running resumes (finished stages are skipped).
      config: ``configs/demo.py`` (the package holds no settings of its own).
      log: where progress, the table and the report path go (``print`` by default).

    Returns:
      The per-patient table (true vs predicted Agatston and category of the test split's
      patients, "gated" = the integrated system's slices sent to the U-Net).
    """
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    seed = int(config.seed)
    t_start = time.perf_counter()

    def timed(name: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = fn(*args)
        log(f"[{name}] {time.perf_counter() - t0:.1f} s")
        return out

    ph = timed("phantom", stages.make_phantom, workdir / "data" / "phantom", config.phantom)
    conv = timed("convert", stages.convert_release, workdir / "data" / "records", ph["release"],
                 config.convert)  # fmt: skip
    manifest = conv["manifest"]
    splits = conv["splits"]
    log(
        "[data] "
        + ", ".join(
            f"{k}: {v['num_studies']} studies / {v['num_records']} slices "
            f"({v['num_positive']} calcified)"
            for k, v in splits.items()
        )
    )
    pre_cfg = stages.seeded(config.pretrain, seed)
    pre = timed("pretrain", stages.pretrain_encoder, workdir / "pretrain", pre_cfg, manifest)
    log(f"[pretrain] {pre['step']} steps, final DINO loss {pre['metrics'].get('loss', 0):.3f}")
    probe_cfg = stages.seeded(config.probe, seed)
    pr = timed(
        "probe", stages.train_probe, workdir / "probe", probe_cfg, manifest, workdir / "pretrain"
    )
    t = pr["test"]
    log(
        f"[probe] test slices: TP {t['tp']} FP {t['fp']} FN {t['fn']} TN {t['tn']}, "
        f"F1 {_num3(t['f1'])}, recall {_num3(t['recall'])} (threshold {pr['threshold']:.3f})"
    )
    if pr.get("patch"):  # eval.patch_probe on the same frozen tokens
        d = pr["patch"]["test"]
        log(
            f"[probe] dense (per patch token): test patch ROC-AUC {_num3(d['patch_roc_auc'])} "
            f"over {d['num_cells']} patches ({d['num_calcium_cells']} with calcium)"
        )
    seg_cfg = stages.seeded(config.segment, seed)
    timed("segment", stages.train_segmenter, workdir / "segment", seg_cfg, manifest)
    inf = timed(
        "infer", stages.infer, workdir / "infer", config.infer, manifest, workdir / "probe",
        workdir / "segment",
    )  # fmt: skip
    table = patient_table(inf["patients"])
    log("")
    log(table)
    log("")
    log(f"report folder: {Path(inf['report']).parent if inf.get('report') else workdir}")
    log(f"total {time.perf_counter() - t_start:.0f} s")
    if config.infer.note:
        log(str(config.infer.note))
    log("")
    for line in score_your_scan(workdir):
        log(line)
    return table


def score_your_scan(workdir: str | os.PathLike) -> list[str]:
    """The demo's closing lines: where its models are and the command that scores a scan
    with them (any spacing: the models see it at the spacing they learnt at)."""
    w = Path(workdir)
    return [
        f"models: encoder {w / 'pretrain'}, gate {w / 'probe'}, U-Net {w / 'segment'}",
        "score your own scan (a DICOM series folder or a .nii.gz CT in HU) with them:",
        f"  python tools/score_study.py YOUR_SCAN --workdir {w} --out score_out",
    ]


def _num3(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"
