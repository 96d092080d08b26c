"""The demo: the whole system on the synthetic phantom, at CPU size, in one call.

``run_demo(workdir)`` runs, each stage resumable in its own folder under ``workdir``
(``experiments.stages``)::

    data/phantom   a COCA-format phantom release (gated patients with calcium XML)
    data/records   its conversion: ArrayRecord shards, manifest.json, splits
    pretrain       DINO-LG pretraining of the nano/8 ViT (300 steps, CPU size)
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

HONEST_NOTE = (
    "This is a demo-size run (a tiny nano/8 ViT pretrained for a few minutes on a small "
    "synthetic phantom, on CPU): it shows the pipeline working end to end; its scores are "
    "not the paper's and say little about the method."
)


# HU window of the demo's pretraining and probe inputs (mapped to [-1, 1]): centred on the
# 130 HU calcium threshold, as configs/ablation.py's CPU variant (measured there).
CALCIUM_HU_WINDOW = (-540.0, 800.0)


def default_config() -> ml_collections.ConfigDict:
    """The demo's settings (``configs/demo.py`` returns this; override fields there).

    30 gated phantom patients at 64 px (24-36 slices), DINO-LG pretraining of ``nano/8``
    (2 x 64 px global + 4 random and 4 guided 32 px local crops, batch 16, 300 steps, the
    CPU lessons of ``configs/ablation.py``), a linear probe on the patch-token max with its
    threshold for recall 1.0 on val, an 8-filter U-Net (1200 steps at lr 5e-3) and scoring
    of the test split (4 patients). Its measured time is in the README.
    """
    from dinolg_jax.train import pretrain, probe, segment

    c = ml_collections.ConfigDict()
    c.seed = 0  # pretraining, probe and U-Net seed
    c.phantom = ml_collections.ConfigDict(
        {"n_gated": 30, "n_nongated": 0, "seed": 0, "size": 64, "slices": (24, 36),
         "workers": min(2, os.cpu_count() or 1)}
    )  # fmt: skip
    c.convert = ml_collections.ConfigDict(
        {"seed": 0, "shards_per_split": 2, "workers": c.phantom.workers}
    )

    p = pretrain.base_config()
    # The lessons of the CPU ablation (configs/ablation.py, measured there): nano/8,
    # Sinkhorn-Knopp centring at a sharp teacher (an EMA-centred teacher stays uniform at
    # this size), a threshold-centred HU window, calcified slices oversampled to half the
    # stream, light blur; 300 steps to fit the demo's budget.
    p.model.variant = "nano/8"
    p.model.dtype = "float32"
    p.model.attention_impl = "xla"
    p.dino.out_dim = 128
    p.dino.hidden_dim = 128
    p.dino.bottleneck_dim = 64
    p.dino.centering = "sinkhorn"
    p.dino.warmup_teacher_temp = 0.003
    p.dino.teacher_temp = 0.003
    p.dino.momentum_teacher = 0.99
    p.num_epochs = 300 / 42  # the schedules end at step 300 (679 slices / 16 = 42 per epoch)
    p.num_steps = 300
    p.optim.lr = 0.016  # per 256 images: 1e-3 at batch 16
    p.optim.warmup_epochs = 1.0
    p.optim.freeze_last_layer = 0.0
    p.data.batch_size = 16
    p.data.global_size = 64
    p.data.local_size = 32
    p.data.n_local_random = 4
    p.data.n_local_guided = 4
    p.data.guided_offset_px = 3.0
    p.data.blur_sigma = (0.1, 0.5)
    p.data.pretrain_positive_fraction = 0.5
    p.data.worker_count = 0
    p.data.hu_window = CALCIUM_HU_WINDOW
    p.log_every = 25
    p.eval_every = 100
    p.checkpoint.every_steps = 100
    p.checkpoint.keep = 2
    c.pretrain = p

    q = probe.base_config("linear")
    q.features.n_last_blocks = 2
    q.features.token_pool = 1
    q.data.batch_size = 32
    q.data.worker_count = 0
    q.data.hu_window = CALCIUM_HU_WINDOW
    q.optim.epochs = 20
    q.optim.batch_size = 64
    q.features.pooling = "max"  # a 2 px lesion is 1 of 64 patches: the max sees it
    q.eval.target_recall = 1.0  # a missed slice costs a patient; a spare one U-Net time
    c.probe = q

    s = segment.base_config("unet")
    s.model.kwargs = {"filters": 8}
    s.data.batch_size = 8
    s.data.worker_count = 0
    s.optim.lr = 5e-3
    s.optim.num_steps = 1200
    s.eval.batch_size = 32
    s.log_every = 50
    s.checkpoint.every_steps = 400
    s.checkpoint.keep = 2
    c.segment = s

    c.infer = stages.infer_config()
    c.infer.batch_size = 32
    c.infer.note = HONEST_NOTE
    return c


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
    return "\n".join(lines)


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
    config: ml_collections.ConfigDict | None = None,
    *,
    log: Callable[[str], None] = print,
) -> str:
    """Phantom -> convert -> DINO-LG pretraining -> probe -> U-Net -> integrated scoring.

    Args:
      workdir: output folder; re-running resumes (finished stages are skipped).
      config: :func:`default_config` (or ``configs/demo.py``) when None.
      log: where progress, the table and the report path go (``print`` by default).

    Returns:
      The per-patient table (true vs predicted Agatston and category of the test split's
      patients, "gated" = the integrated system's slices sent to the U-Net).
    """
    config = default_config() if config is None else config
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
    log(HONEST_NOTE)
    return table


def _num3(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"
