"""The ablation's Markdown report and its figures (the paper's Fig. 6, Table 6, Fig. 8).

Input: the ``results.json`` dict of :func:`dinolg_jax.experiments.ablation.run_ablation`.
Scalars are shown as ``mean ± SD (n)`` over seeds (sample SD; n = seeds where the metric
is defined, e.g. F1 is undefined when a split has no positive); confusion matrices are
summed over seeds (true class on rows).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from dinolg_jax.runtime import curves as curves_lib
from dinolg_jax.scoring.agatston import RISK_SCHEMES, VESSELS

PROBE_CLASSES = ("no calcium", "calcium")


def fmt(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``mean ± sd (n)`` of a :func:`ablation.mean_spread` entry; ``n/a`` when undefined."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    text = f"{stat['mean']:.{digits}f}"
    if stat.get("std") is not None:
        text += f" ± {stat['std']:.{digits}f}"
    return f"{text} ({stat['n']})"


def matrix_table(cm: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """A Markdown confusion matrix, true class on rows."""
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |"]
    lines.append("|---" * (len(classes) + 1) + "|")
    for name, row in zip(classes, cm, strict=True):
        lines.append(f"| {name} | " + " | ".join(str(int(c)) for c in row) + " |")
    return "\n".join(lines)


def plot_matrices(
    panels: Sequence[tuple[str, Sequence[Sequence[int]]]],
    classes: Sequence[str],
    path: str | os.PathLike,
) -> None:
    """One PNG with a confusion-matrix panel per (title, matrix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    size = 1.0 + 0.75 * len(classes)
    fig, axes = plt.subplots(1, n, figsize=(size * n + 0.5, size + 0.6), dpi=110, squeeze=False)
    for ax, (title, cm) in zip(axes[0], panels, strict=True):
        m = np.asarray(cm, np.int64)
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(int(m.max()), 1))
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, fontsize=7, rotation=30)
        ax.set_yticks(ticks, classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(title, fontsize=8)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                color = "white" if m[i, j] > m.max() / 2 else "black"
                ax.text(j, i, str(m[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _arm_label(name: str, crops: Mapping[str, Any]) -> str:
    if crops.get("supervised"):
        return f"{name} (the random init trained on the slice labels: the ceiling)"
    if crops.get("pretrained") is False:
        return f"{name} (the seed's random-initialised encoder, no pretraining)"
    return f"{name} ({crops['n_local_random']} random + {crops['n_local_guided']} guided)"


def _dense(run: Mapping[str, Any]) -> float | None:
    """The dense probe's test patch ROC-AUC of one (seed, arm) run (None without it)."""
    return (run["probe"].get("patch") or {}).get("test_patch_roc_auc")


def _paired_difference(
    results: Mapping[str, Any],
    arms: Sequence[str],
    key: str,
    value: Callable[[Mapping[str, Any]], float | None] | None = None,
) -> str:
    """Per-seed difference of a probe test metric between the last and the first arm.

    ``value`` reads the metric from one (seed, arm) run; default: the slice probe's
    ``test[key]``, and ``key`` then names it in the line.
    """
    if len(arms) < 2:
        return ""
    value = value or (lambda r: r["probe"]["test"].get(key))
    a, b = arms[0], arms[-1]
    diffs = []
    for seed in sorted(results["runs"], key=int):
        run = results["runs"][seed]
        x, y = value(run[a]), value(run[b])
        if x is not None and y is not None:
            diffs.append(y - x)
    if not diffs:
        return f"{b} − {a} {key}: undefined on every seed."
    d = np.asarray(diffs)
    sd = f" ± {d.std(ddof=1):.3f}" if d.size > 1 else ""
    wins = int(np.sum(d > 0))
    return (
        f"Paired per seed, {b} − {a} probe {key}: {d.mean():+.3f}{sd} over {d.size} seed(s); "
        f"{b} higher on {wins}, lower on {int(np.sum(d < 0))}, equal on {int(np.sum(d == 0))}."
    )


HEADROOM_MIN = 0.15  # ceiling - floor probe ROC-AUC below which the run cannot decide


def headroom(results: Mapping[str, Any]) -> float | None:
    """Mean over seeds of the ceiling's minus the control's probe test ROC-AUC (None when
    either arm is absent or undefined)."""
    floor, ceiling = results.get("control"), results.get("ceiling")
    if not floor or not ceiling:
        return None
    diffs = []
    for run in results["runs"].values():
        a, b = run[floor]["probe"]["test"]["roc_auc"], run[ceiling]["probe"]["test"]["roc_auc"]
        if a is not None and b is not None:
            diffs.append(b - a)
    return float(np.mean(diffs)) if diffs else None


def _dense_lines(results: Mapping[str, Any], trained: Sequence[str]) -> list[str]:
    """The dense probe's section (``eval.patch_probe``); none when no run has it."""
    arms, agg = list(results["arms"]), results["aggregate"]
    if not any("patch_probe_roc_auc" in agg[a] for a in arms):
        return []
    lines = [
        "## Dense probe: calcium in the patch tokens (test split)",
        "",
        "A linear classifier on each frozen patch token, trained on 'the patch holds a "
        "calcium label pixel' (eval.patch_probe): patch ROC-AUC over all test patches "
        "(0.5 = the tokens do not say where calcium is), and the slice ROC-AUC of each "
        "slice's largest patch score.",
        "",
        "| Arm | patch ROC-AUC | slice ROC-AUC (max over patches) |",
        "|---|---|---|",
    ]
    for arm in arms:
        cells = (fmt(agg[arm].get(k)) for k in ("patch_probe_roc_auc", "patch_probe_slice_roc_auc"))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("")
    control = results.get("control")
    pairs = [[control, arm] for arm in trained if control] + ([trained] if len(trained) > 1 else [])
    for pair in pairs:
        lines.append(_paired_difference(results, pair, "patch roc_auc", _dense))
    return lines


def _headroom_lines(results: Mapping[str, Any]) -> list[str]:
    """The ceiling against the floor, and a warning when there is no room between them."""
    room = headroom(results)
    if room is None:
        return []
    floor, ceiling = results["control"], results["ceiling"]
    lines = [_paired_difference(results, [floor, ceiling], "roc_auc")]
    if room < HEADROOM_MIN:
        lines += [
            "",
            f"**Warning: no headroom.** Trained on the labels themselves, the encoder's "
            f"probe ROC-AUC is {room:+.3f} from its random init's (less than "
            f"+{HEADROOM_MIN}): at this size of model, input and data no pretraining can "
            "show a difference, and the arms' differences above are noise.",
        ]
    return lines


def _decide_lines(results: Mapping[str, Any]) -> list[str]:
    """Can this run decide? The headroom (ceiling - floor) and the yardsticks, first."""
    room = headroom(results)
    base = results.get("baseline") or {}
    lines = ["## Can this run decide?", ""]
    if room is None:
        lines.append("No headroom measured (the run has no control or no ceiling arm).")
    else:
        verdict = (
            f"at least {HEADROOM_MIN}: the run can tell the arms apart"
            if room >= HEADROOM_MIN
            else f"under {HEADROOM_MIN}: **this run cannot decide**; the arms' differences "
            "below are within what an encoder of this size reads of calcium at all"
        )
        lines.append(
            f"Headroom (ceiling {results['ceiling']} - floor {results['control']}, slice "
            f"probe test ROC-AUC, mean over seeds): {room:+.3f}, {verdict}."
        )
    if base.get("cnn_roc_auc") is not None:
        lines += ["", f"Signal in the data: a small supervised CNN (train.cnn_baseline) reads "
                  f"calcium at test ROC-AUC {base['cnn_roc_auc']:.3f} (val "
                  f"{base['cnn_val_roc_auc']:.3f}), first seed."]  # fmt: skip
    return [*lines, ""]


def _ci(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("diff") is None:
        return "n/a"
    lo, hi = d["ci95"]
    return f"{d['diff']:+.3f} [{_num(lo)}, {_num(hi)}]"


def _comparison_lines(results: Mapping[str, Any]) -> list[str]:
    """Paired differences with 95 % intervals (``experiments.ablation_comparisons``)."""
    comp = results.get("comparisons") or {}
    if not comp:
        return []
    n = next((d["n_seeds"] for e in comp.values() for d in e.values()), 0)
    lines = [
        "## Paired differences (test split, 95 % intervals)",
        "",
        f"Mean over {n} seed(s) of a - b; interval: two-level percentile bootstrap (seeds and "
        "test patients resampled, paired). An interval above 0 says a is ahead.",
        "",
        "| a - b | slice probe ROC-AUC | dense probe patch ROC-AUC | attn_calcium_ratio |",
        "|---|---|---|---|",
    ]
    for pair, entry in comp.items():
        cells = (_ci(entry.get(m)) for m in
                 ("probe_roc_auc", "patch_probe_roc_auc", "attn_calcium_ratio"))  # fmt: skip
        lines.append(f"| {pair.replace('_vs_', ' - ')} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _gate_lines(results: Mapping[str, Any], trained: Sequence[str]) -> list[str]:
    """The gate as the paper uses it: slice recall, the share of slices sent to the U-Net
    and the patients whose risk category it changes (or loses) against the U-Net alone."""
    agg = results["aggregate"]
    rows = [a for a in trained if "gate_risk_changed" in agg[a]]
    if not rows:
        return []
    lines = [
        "## The gate against the U-Net alone (test split)",
        "",
        "Threshold chosen on val for the target recall; per arm, mean over seeds (patients "
        "summed over seeds in the last two columns).",
        "",
        "| Arm | slice recall | share of slices segmented | patients: risk category "
        "changed | calcified patients lost |",
        "|---|---|---|---|---|",
    ]
    for arm in rows:
        runs = [r[arm] for r in results["runs"].values() if "gate" in r.get(arm, {})]
        changed = sum(r["gate"]["risk_changed"] for r in runs)
        lost = sum(r["gate"]["lost_calcified"] for r in runs)
        total = sum(r["gate"]["patients"] for r in runs)
        lines.append(f"| {arm} | {fmt(agg[arm].get('gate_slice_recall'))} | "
                     f"{fmt(agg[arm].get('gated_segmented_fraction'))} | {changed} / {total} | "
                     f"{lost} / {total} |")  # fmt: skip
    return [*lines, ""]


def _setup_lines(results: Mapping[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    arms = list(results["arms"])
    if config.data_manifest:
        data = f"converted dataset `{config.data_manifest}`"
    else:
        ph = config.phantom
        data = (
            f"synthetic phantom, {ph.n_gated} gated patients at {ph.size} px "
            f"({ph.slices[0]}-{ph.slices[1]} slices), phantom seed {ph.seed}"
        )
    pre = config.pretrain
    steps = int(pre.num_steps) if int(pre.num_steps) > 0 else f"{pre.num_epochs} epochs"
    shared = config.segment.model.name != "vit_unet"
    unet = "one per seed, shared by the arms" if shared else "trained per arm"
    out = [
        f"- Data: {data}; the same for every arm and seed.",
        "- Arms: " + "; ".join(_arm_label(a, results["arms"][a]) for a in arms) + ".",
        f"- Seeds: {', '.join(str(s) for s in results['seeds'])} (pretraining, probe and "
        "U-Net seeds; the data and their splits are fixed).",
        f"- Pretraining: ViT {pre.model.variant}, {pre.data.n_global} x {pre.data.global_size} "
        f"px global + {config.n_local} x {pre.data.local_size} px local crops, global batch "
        f"{pre.data.batch_size}, {steps} steps.",
        f"- Probe: {config.probe.probe.name} on the frozen teacher backbone, threshold for "
        f"recall {config.probe.eval.target_recall} on val. U-Net: {config.segment.model.name}"
        f" ({unet}).",
        "- Scalars: mean ± sample SD (n seeds where defined); matrices summed over seeds.",
    ]
    if results.get("ceiling"):
        sup = config.supervised
        out.insert(
            -1,
            f"- Ceiling ({results['ceiling']}): the random init trained end to end on the "
            f"train split's slice labels, {sup.optim.num_steps} steps at batch "
            f"{sup.batch_size} ({sup.positive_fraction:.0%} calcified), then the same probe.",
        )
    return out


def _probe_table(results: Mapping[str, Any]) -> list[str]:
    """The slice probe's test metrics per arm (mean ± SD over seeds)."""
    agg = results["aggregate"]
    lines = ["## Calcified-slice probe (test split)", ""]
    keys = ("probe_f1", "probe_precision", "probe_recall", "probe_specificity", "probe_roc_auc",
            "probe_threshold")  # fmt: skip
    lines.append("| Arm | F1 | precision | recall | specificity | ROC-AUC | threshold |")
    lines.append("|---|---|---|---|---|---|---|")
    for arm in results["arms"]:
        lines.append(f"| {arm} | " + " | ".join(fmt(agg[arm].get(k)) for k in keys) + " |")
    return lines


def _probe_comparison_lines(results: Mapping[str, Any], trained: Sequence[str]) -> list[str]:
    """The paired per-seed differences of the slice probe: last against first pretrained
    arm, the last against the control, the ceiling against the control."""
    lines = ["", _paired_difference(results, trained, "f1")]
    lines += [_paired_difference(results, trained, "roc_auc")]
    if results.get("control"):
        lines += [_paired_difference(results, [results["control"], trained[-1]], "roc_auc")]
    return lines + _headroom_lines(results)


def _hu_yardstick_lines(results: Mapping[str, Any]) -> list[str]:
    """The encoder-free yardstick (a probe on the HU histogram); none without it."""
    hist = (results.get("baseline") or {}).get("hu_histogram")
    if not hist:
        return []
    val, test = ({"mean": hist.get(f"{k}_roc_auc"), "n": 1} for k in ("val", "test"))
    edges = ", ".join(map(str, hist["hu_edges"]))
    return [
        "",
        "Yardstick (no encoder): the same linear probe on each slice's HU histogram "
        f"({len(hist['hu_edges']) - 1} bins, edges {edges} HU): ROC-AUC val {fmt(val)}, "
        f"test {fmt(test)}. An encoder whose probe stays below it reads less calcium "
        "than a brightness count.",
    ]


def _attention_lines(results: Mapping[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """attn_calcium_ratio (over seeds; per head of the first seed) and the online
    kNN / probe ROC-AUC per arm."""
    agg = results["aggregate"]
    lines = ["## Attention on calcium (Fig. 3 as a number)", ""]
    lines.append(
        "attn_calcium_ratio: share of the last block's CLS-to-patch attention (head mean) "
        "on patches that contain calcium, over the share of such patches (chance = 1), "
        f"mean over the calcified slices of the {config.attention_split} split."
    )
    lines.append("")
    lines.append(
        "| Arm | attn_calcium_ratio | per head (seed 0 order) | online kNN / probe ROC-AUC |"
    )
    lines.append("|---|---|---|---|")
    first = sorted(results["runs"], key=int)[0]
    for arm in results["arms"]:
        run = results["runs"][first][arm]
        heads = ", ".join(f"{h:.2f}" for h in run.get("attention", {}).get("per_head", []))
        knn, lin = (fmt(agg[arm].get(f"online_{k}_roc_auc")) for k in ("knn", "probe"))
        online = f"{knn} / {lin}"
        lines.append(
            f"| {arm} | {fmt(agg[arm].get('attn_calcium_ratio'))} | {heads or 'n/a'} | {online} |"
        )
    lines.append("")
    return lines


def _fig6_lines(results: Mapping[str, Any], out: Path) -> list[str]:
    """The slice probe's summed confusion matrices per arm; plots out/fig6_probe_confusion.png."""
    arms, agg = list(results["arms"]), results["aggregate"]
    lines = ["### Slice-classification confusion matrices (Fig. 6)", ""]
    for arm in arms:
        lines += [f"{arm}:", "", matrix_table(agg[arm]["probe_confusion"], PROBE_CLASSES), ""]
    plot_matrices(
        [(arm, agg[arm]["probe_confusion"]) for arm in arms],
        PROBE_CLASSES,
        out / "fig6_probe_confusion.png",
    )
    lines += ["![fig6](fig6_probe_confusion.png)", ""]
    return lines


def _scoring_modes(agg: Mapping[str, Any], trained: Sequence[str]) -> list[tuple[str, str, str]]:
    """(mode, arm, title) of every scoring system with numbers: the U-Net alone (first
    pretrained arm's run), then each pretrained arm's integrated (gated) scoring."""
    modes = [("unet_only", trained[0], "U-Net only")] + [
        ("gated", arm, f"{arm} integrated") for arm in trained
    ]
    return [m for m in modes if f"{m[0]}_f1_mean" in agg[m[1]]]


def _presence_lines(agg: Mapping[str, Any], modes: Sequence[tuple[str, str, str]]) -> list[str]:
    """Table 6: precision / recall / F1 of calcium presence per artery and system."""
    lines = ["## Calcium presence per artery and patient (Table 6)", ""]
    lines.append(
        "Precision / recall / F1 of 'the artery has calcium' (Agatston > 0) per test patient; "
        "Average = unweighted mean over the arteries."
    )
    lines.append("")
    lines.append("| Artery | " + " | ".join(f"{t} P / R / F1" for _, _, t in modes) + " |")
    lines.append("|---" * (len(modes) + 1) + "|")
    for v in (*VESSELS, "mean"):
        cells = []
        for mode, arm, _ in modes:
            a = agg[arm]
            cells.append(
                " / ".join(fmt(a.get(f"{mode}_{k}_{v}"), 2) for k in ("precision", "recall", "f1"))
            )
        lines.append(f"| {'Average' if v == 'mean' else v} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _risk_lines(
    agg: Mapping[str, Any], modes: Sequence[tuple[str, str, str]], out: Path
) -> list[str]:
    """Fig. 8: risk-category agreement per system and their summed confusion matrices;
    plots out/fig8_risk_confusion.png when any system has one."""
    classes = RISK_SCHEMES["paper4"]
    lines = ["## Risk categories (Fig. 8)", ""]
    lines.append(
        "| System | accuracy | linearly weighted kappa | ICC(2,1) of totals | slices segmented "
        "| gate slice recall |"
    )
    lines.append("|---|---|---|---|---|---|")
    panels = []
    for mode, arm, title in modes:
        a = agg[arm]
        lines.append(
            f"| {title} | {fmt(a.get(f'{mode}_risk_accuracy'))} | "
            f"{fmt(a.get(f'{mode}_risk_kappa_linear'))} | {fmt(a.get(f'{mode}_icc'))} | "
            f"{fmt(a.get(f'{mode}_segmented_fraction'))} | "
            f"{fmt(a.get('gate_slice_recall')) if mode == 'gated' else 'n/a'} |"
        )
        if f"{mode}_risk_confusion" in a:
            panels.append((title, a[f"{mode}_risk_confusion"]))
    lines.append("")
    for title, cm in panels:
        lines += [f"{title}:", "", matrix_table(cm, classes), ""]
    if panels:
        plot_matrices(panels, classes, out / "fig8_risk_confusion.png")
        lines += ["![fig8](fig8_risk_confusion.png)", ""]
    return lines


def _num(x: Any) -> str:
    """A per-seed number to 3 decimals; ``n/a`` for None."""
    return "n/a" if x is None else f"{x:.3f}"


def _curves_lines(results: Mapping[str, Any], out: Path, runs_dir: Path) -> list[str]:
    """The arms' training curves of the first seed side by side: each trained arm's
    ``curves.png`` linked in one table row, and ``out/curves_arms.png``, the pretrained
    arms overlaid per panel (``runtime.curves.plot_overlay``). Empty when no arm's
    run left a ``metrics.jsonl`` under ``runs_dir/seed<s>/<arm>/pretrain``."""
    seeds = results.get("seeds") or []
    if not seeds:
        return []
    seed = int(seeds[0])
    runs = {arm: runs_dir / f"seed{seed}" / arm / "pretrain" for arm in results["arms"]}
    runs = {arm: d for arm, d in runs.items() if (d / "metrics.jsonl").is_file()}
    if not runs:
        return []
    lines = [f"## Training curves (seed {seed})", ""]
    lines.append(
        "Each trained arm's `curves.png` (loss, learning rate, the collapse monitors, the "
        "online kNN / probe ROC-AUC beside the random init's), side by side:"
    )
    lines += ["", "| " + " | ".join(runs) + " |", "|---" * len(runs) + "|"]
    cells = []
    for arm, d in runs.items():
        rel = Path(os.path.relpath(d / curves_lib.CURVES, out)).as_posix()
        cells.append(f"![{arm}]({rel})" if (d / curves_lib.CURVES).is_file() else "(none)")
    lines += ["| " + " | ".join(cells) + " |", ""]
    pretrained = {
        arm: curves_lib.read_metrics(d / "metrics.jsonl")
        for arm, d in runs.items()
        if results["arms"][arm].get("pretrained", True)
    }
    if pretrained and curves_lib.plot_overlay(
        pretrained, out / "curves_arms.png", title=f"pretrained arms, seed {seed}"
    ):
        lines += ["The pretrained arms overlaid, one panel per quantity:", ""]
        lines += ["![curves by arm](curves_arms.png)", ""]
    return lines


def _per_seed_lines(results: Mapping[str, Any]) -> list[str]:
    """One row per (seed, arm): the unaveraged numbers behind the tables above."""
    lines = ["## Per seed", ""]
    lines.append(
        "| Seed | Arm | pretrain loss | probe F1 | probe recall | probe ROC-AUC | "
        "dense patch ROC-AUC | attn_calcium_ratio | integrated mean F1 | risk accuracy |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for seed in sorted(results["runs"], key=int):
        for arm in results["arms"]:
            r = results["runs"][seed][arm]
            g = r.get("gated", {})
            lines.append(
                f"| {seed} | {arm} | {_num(r['pretrain']['final_loss'])} | "
                f"{_num(r['probe']['test']['f1'])} | {_num(r['probe']['test']['recall'])} | "
                f"{_num(r['probe']['test']['roc_auc'])} | {_num(_dense(r))} | "
                f"{_num(r.get('attention', {}).get('mean'))} | "
                f"{_num(g.get('presence', {}).get('mean', {}).get('f1'))} | "
                f"{_num(g.get('risk_paper4', {}).get('accuracy'))} |"
            )
    return lines


def write(
    out_dir: str | os.PathLike,
    results: Mapping[str, Any],
    config: ml_collections.ConfigDict,
    *,
    runs_dir: str | os.PathLike | None = None,
) -> Path:
    """Writes ``out_dir/report.md`` with fig6_probe_confusion.png, fig8_risk_confusion.png
    and the arms' training curves (``curves_arms.png``, links to each arm's curves.png).

    Args:
      out_dir: the report's folder.
      results: ``run_ablation``'s results.
      config: the ablation config.
      runs_dir: the ablation workdir holding ``seed<s>/<arm>/pretrain`` (default: the
        report folder's parent, as ``run_ablation`` lays it out).

    Returns:
      The report's path.
    """
    out = Path(out_dir)
    runs_dir = Path(runs_dir) if runs_dir is not None else out.parent
    out.mkdir(parents=True, exist_ok=True)
    arms = list(results["arms"])
    lines = ["# DINO vs DINO-LG ablation", ""]
    if config.note:
        lines += [str(config.note), ""]
    lines += [*_setup_lines(results, config), ""]
    lines += _decide_lines(results)
    trained = [a for a in arms if results["arms"][a].get("pretrained", True)]
    lines += _comparison_lines(results)
    lines += _probe_table(results)
    lines += _probe_comparison_lines(results, trained)
    lines += _hu_yardstick_lines(results)
    lines += ["", *_dense_lines(results, trained), ""]
    lines += _attention_lines(results, config)
    lines += _fig6_lines(results, out)
    lines += _gate_lines(results, trained)
    modes = _scoring_modes(results["aggregate"], trained)
    lines += _presence_lines(results["aggregate"], modes)
    lines += _risk_lines(results["aggregate"], modes, out)
    lines += _curves_lines(results, out, runs_dir)
    lines += _per_seed_lines(results)
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
