"""Evaluation report of per-patient calcium scores: the paper's Table 6, Figs. 7 and 8.

Input: per-patient reference scores and, per mode ("unet_only", "gated" = the integrated
system), per-patient predicted scores, each ``{"RCA", "LAD", "LCA", "LCX", "total"}``
(Agatston, same convention on both sides). ``inference.batch.scores_from_results`` gives
them from an inference run's results. Only patients scored without error in a mode
and having a reference enter that mode's numbers; the others are listed.

Per mode (:func:`evaluate_mode`, all maths in :mod:`dinolg_jax.eval.metrics`):

* presence: per-artery precision / recall / F1 of "the vessel has calcium" (score > 0)
  per patient, and their unweighted mean over the four arteries (Table 6);
* risk: confusion matrices of the risk categories (``paper4``: the paper's Fig. 8 and
  ``standard5``), true category on rows, with accuracy and linearly weighted kappa;
* agreement of total scores: ICC(2,1) (absolute agreement), Pearson, Spearman and the
  Bland-Altman bias and limits (prediction - reference), plus two PNG plots: predicted vs
  reference per patient (Fig. 7) and Bland-Altman;
* intervals: 95 % percentile-bootstrap intervals over patients
  (``eval.metrics.agreement_intervals``, 1000 resamples, seed 0) of the presence F1 (per
  artery and mean), the risk accuracy and linearly weighted kappa, and ICC(2,1), printed as
  ``0.82 [0.74, 0.88]``.

:func:`evaluate_nongated` compares non-gated predictions with ``scores.xlsx``
(``data.coca.load_nongated_scores``) the same way. :func:`write_report` renders one
Markdown file with the tables (Table 6, a per-patient table of reference vs predicted
totals and classes, confusion matrices, agreement) and plots, stating the Agatston
convention used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinolg_jax.eval import metrics
from dinolg_jax.scoring.agatston import RISK_SCHEMES, VESSELS

Scores = Mapping[str, float]  # {"RCA", "LAD", "LCA", "LCX", "total"}
MODE_TITLES = {
    "unet_only": "U-Net only",
    "gated": "Integrated (DINO-LG gate + U-Net)",
    "nongated": "Non-gated",
}
MODE_SHORT = {"unet_only": "U-Net", "gated": "Integrated", "nongated": "Non-gated"}
SCHEMES = ("paper4", "standard5")


def _paired(
    truth: Mapping[str, Scores], pred: Mapping[str, Scores]
) -> tuple[list[str], list[str], list[str]]:
    """(studies in both, reference without prediction, prediction without reference)."""
    both = sorted(set(truth) & set(pred))
    return both, sorted(set(truth) - set(pred)), sorted(set(pred) - set(truth))


def agreement(true_total: Sequence[float], pred_total: Sequence[float]) -> dict[str, Any]:
    """ICC(2,1), ICC(3,1), Pearson, Spearman and Bland-Altman of total scores (NaN if n < 2)."""
    t = np.asarray(true_total, np.float64)
    p = np.asarray(pred_total, np.float64)
    out: dict[str, Any] = {"n": int(t.size)}
    if t.size < 2:
        nan = math.nan
        out.update(icc=nan, icc_consistency=nan, pearson=nan, spearman=nan)
        out["bland_altman"] = {"bias": nan, "sd": nan, "loa_lower": nan, "loa_upper": nan}
        return out
    ratings = np.stack([t, p], axis=1)
    out["icc"] = metrics.icc(ratings, "2,1")
    out["icc_consistency"] = metrics.icc(ratings, "3,1")
    out["pearson"] = metrics.pearson(t, p)
    out["spearman"] = metrics.spearman(t, p)
    out["bland_altman"] = metrics.bland_altman(p, t).summary()
    return out


def risk_tables(true_total: Sequence[float], pred_total: Sequence[float]) -> dict[str, Any]:
    """Per scheme: confusion matrix (true rows), accuracy, linear and unweighted kappa."""
    out = {}
    for scheme in SCHEMES:
        cm = metrics.risk_confusion(np.asarray(true_total), np.asarray(pred_total), scheme)
        out[scheme] = {
            "classes": list(RISK_SCHEMES[scheme]),
            "confusion": cm.tolist(),
            "accuracy": metrics.accuracy_from_confusion(cm),
            "kappa_linear": metrics.kappa_from_confusion(cm, "linear"),
            "kappa": metrics.kappa_from_confusion(cm),
        }
    return out


def evaluate_mode(
    truth: Mapping[str, Scores],
    pred: Mapping[str, Scores],
    *,
    n_boot: int = metrics.BOOTSTRAP_RESAMPLES,
    seed: int = metrics.BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Presence, risk and agreement of one mode's predictions against the reference.

    ``intervals`` holds ``{name: {"value", "ci95": [lo, hi], "n_boot", "n_groups"}}`` for
    ``icc``, ``f1`` (mean over the arteries), ``f1_<artery>``, ``<scheme>_accuracy`` and
    ``<scheme>_kappa_linear`` (``eval.metrics.agreement_intervals`` over the patients,
    ``n_boot`` resamples, ``seed``); ``bootstrap`` states those settings.
    """
    studies, no_pred, no_truth = _paired(truth, pred)
    t_rows = [truth[s] for s in studies]
    p_rows = [pred[s] for s in studies]
    t_total = [float(r["total"]) for r in t_rows]
    p_total = [float(r["total"]) for r in p_rows]
    out: dict[str, Any] = {
        "studies": studies,
        "missing_prediction": no_pred,
        "missing_reference": no_truth,
        "true_total": t_total,
        "pred_total": p_total,
    }
    if not studies:
        return out
    t_present = metrics.presence_from_scores(t_rows)
    p_present = metrics.presence_from_scores(p_rows)
    out["presence"] = metrics.presence_metrics(t_present, p_present)
    out["risk"] = risk_tables(t_total, p_total)
    out["agreement"] = agreement(t_total, p_total)
    intervals = metrics.agreement_intervals(
        t_total, p_total, t_present, p_present, schemes=SCHEMES, n_boot=n_boot, seed=seed
    )
    out["intervals"] = {name: iv.summary() for name, iv in intervals.items()}
    out["bootstrap"] = {"over": "patients", "level": 0.95, "n_boot": int(n_boot), "seed": seed}
    return out


def evaluate(
    truth: Mapping[str, Scores],
    predictions: Mapping[str, Mapping[str, Scores]],
    **bootstrap: int,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_mode` for every mode in ``predictions`` (``n_boot``, ``seed`` passed on)."""
    return {mode: evaluate_mode(truth, pred, **bootstrap) for mode, pred in predictions.items()}


def evaluate_nongated(
    pred: Mapping[str, Scores], sheet: Mapping[str, Mapping[str, Any]], **bootstrap: int
) -> dict[str, Any]:
    """Non-gated predictions (keyed ``nongated-<n>``) against ``scores.xlsx`` rows.

    Args:
      pred: {study id: scores} from inference over the non-gated studies.
      sheet: ``data.coca.load_nongated_scores(root)`` ({"12A": {"RCA", ..., "total"}}).
      bootstrap: ``n_boot`` / ``seed`` of :func:`evaluate_mode`.
    """
    from dinolg_jax.data import coca

    truth = {coca.nongated_study_id(sid): dict(row) for sid, row in sheet.items()}
    return evaluate_mode(truth, pred, **bootstrap)


# ----------------------------------------------------------------------------- rendering


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _ci(ev: Mapping[str, Any], name: str, value: Any, digits: int = 2) -> str:
    """``value [lo, hi]`` when ``ev`` holds the interval ``name``, else the value alone."""
    interval = (ev.get("intervals") or {}).get(name)
    if interval is None:
        return _f(value, digits)
    return metrics.format_interval(value, interval["ci95"], digits)


def presence_table(evals: Mapping[str, Mapping[str, Any]], modes: Sequence[str]) -> str:
    """Markdown Table 6: per artery precision / recall / F1 of each mode side by side."""
    modes = [m for m in modes if "presence" in evals.get(m, {})]
    head = "| Artery | " + " | ".join(
        f"{MODE_SHORT.get(m, m)} {k}" for m in modes for k in ("precision", "recall", "F1")
    )
    lines = [head + " |", "|---" * (1 + 3 * len(modes)) + "|"]
    for v in (*VESSELS, "mean"):
        cells = []
        for m in modes:
            r = evals[m]["presence"][v]
            f1 = _ci(evals[m], "f1" if v == "mean" else f"f1_{v}", r["f1"])
            cells += [_f(r["precision"]), _f(r["recall"]), f1]
        lines.append(f"| {'Average' if v == 'mean' else v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def patient_table(evals: Mapping[str, Mapping[str, Any]], modes: Sequence[str]) -> str:
    """Markdown per-patient table: reference and each mode's total Agatston and paper4 class."""
    from dinolg_jax.scoring.agatston import risk_category

    modes = [m for m in modes if evals.get(m, {}).get("studies")]
    truth: dict[str, float] = {}
    pred: dict[str, dict[str, float]] = {m: {} for m in modes}
    for m in modes:
        ev = evals[m]
        for sid, t, p in zip(ev["studies"], ev["true_total"], ev["pred_total"], strict=True):
            truth[sid] = t
            pred[m][sid] = p
    head = "| Patient | Reference | " + " | ".join(MODE_SHORT.get(m, m) for m in modes) + " |"
    lines = [head, "|---" * (2 + len(modes)) + "|"]
    for sid in sorted(truth):
        cells = [f"{truth[sid]:.1f} ({risk_category(truth[sid], 'paper4')})"]
        for m in modes:
            p = pred[m].get(sid)
            cells.append("n/a" if p is None else f"{p:.1f} ({risk_category(p, 'paper4')})")
        lines.append(f"| {sid} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_table(risk: Mapping[str, Any]) -> str:
    """Markdown confusion matrix (true category on rows, predicted on columns)."""
    classes = risk["classes"]
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |"]
    lines.append("|---" * (len(classes) + 1) + "|")
    for name, row in zip(classes, risk["confusion"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(int(c)) for c in row) + " |")
    return "\n".join(lines)


def plot_agreement(ev: Mapping[str, Any], out_dir: Path, stem: str, title: str) -> list[str]:
    """Writes ``<stem>_scatter.png`` (Fig. 7) and ``<stem>_bland_altman.png``; returns names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(ev["true_total"], np.float64)
    p = np.asarray(ev["pred_total"], np.float64)
    names = []
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    hi = max(float(t.max(initial=0.0)), float(p.max(initial=0.0)), 1.0)
    ax.plot([0, hi], [0, hi], color="0.6", lw=1, label="identity")
    ax.scatter(t, p, s=18, color="tab:blue")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("reference Agatston")
    ax.set_ylabel("predicted Agatston")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"{stem}_scatter.png")
    plt.close(fig)
    names.append(f"{stem}_scatter.png")
    if t.size >= 2:
        ba = ev["agreement"]["bland_altman"]
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        ax.scatter((t + p) / 2, p - t, s=18, color="tab:blue")
        for y, style in ((ba["bias"], "-"), (ba["loa_lower"], "--"), (ba["loa_upper"], "--")):
            ax.axhline(y, color="tab:red", ls=style, lw=1)
        ax.set_xlabel("mean of reference and predicted")
        ax.set_ylabel("predicted - reference")
        ax.set_title(f"Bland-Altman: {title}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}_bland_altman.png")
        plt.close(fig)
        names.append(f"{stem}_bland_altman.png")
    return names


def _mode_section(ev: Mapping[str, Any], title: str, out_dir: Path, stem: str) -> list[str]:
    lines = [f"## {title}", ""]
    lines.append(f"Patients: {len(ev['studies'])}.")
    if ev["missing_prediction"]:
        lines.append(f"No prediction (error or not run): {', '.join(ev['missing_prediction'])}.")
    if ev["missing_reference"]:
        lines.append(f"No reference: {', '.join(ev['missing_reference'])}.")
    lines.append("")
    if not ev["studies"]:
        return lines
    for scheme in SCHEMES:
        r = ev["risk"][scheme]
        accuracy = _ci(ev, f"{scheme}_accuracy", r["accuracy"], 3)
        kappa = _ci(ev, f"{scheme}_kappa_linear", r["kappa_linear"], 3)
        lines += [
            f"Risk categories ({scheme}): accuracy {accuracy}, linearly weighted "
            f"kappa {kappa}, unweighted kappa {_f(r['kappa'], 3)}.",
            "",
            confusion_table(r),
            "",
        ]
    a = ev["agreement"]
    ba = a["bland_altman"]
    lines += [
        "| n | ICC(2,1) | ICC(3,1) | Pearson | Spearman | BA bias | BA 95% limits |",
        "|---|---|---|---|---|---|---|",
        f"| {a['n']} | {_ci(ev, 'icc', a['icc'], 3)} | {_f(a['icc_consistency'], 3)} | "
        f"{_f(a['pearson'], 3)} | {_f(a['spearman'], 3)} | {_f(ba['bias'])} | "
        f"{_f(ba['loa_lower'])} to {_f(ba['loa_upper'])} |",
        "",
    ]
    for name in plot_agreement(ev, out_dir, stem, title):
        lines += [f"![{name}]({name})", ""]
    return lines


def write_report(
    out_dir: str | os.PathLike,
    evals: Mapping[str, Mapping[str, Any]],
    convention: Mapping[str, Any],
    *,
    nongated: Mapping[str, Any] | None = None,
    title: str = "Coronary artery calcium scoring: evaluation",
    notes: Sequence[str] = (),
) -> Path:
    """Writes ``out_dir/report.md`` (and its PNG plots) from :func:`evaluate` results.

    Args:
      out_dir: folder (created).
      evals: {mode: :func:`evaluate_mode` result}.
      convention: the Agatston options used (threshold_hu, connectivity, min_area_mm2,
        thickness normalisation), stated at the top of the report.
      nongated: optional :func:`evaluate_nongated` result.
      title: first heading.
      notes: extra lines (e.g. "demo-size run") under the convention.

    Returns:
      The report's path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conv = ", ".join(f"{k} = {v}" for k, v in convention.items())
    lines = [f"# {title}", "", f"Agatston convention: {conv}.", ""]
    boot = next((ev["bootstrap"] for ev in evals.values() if "bootstrap" in ev), None)
    if boot is not None:
        lines += [
            "Intervals: `value [lo, hi]` is the 95 % percentile-bootstrap interval over "
            f"patients ({boot['n_boot']} resamples, seed {boot['seed']}).",
            "",
        ]
    lines += [*notes, ""] if notes else []
    modes = [m for m in ("unet_only", "gated") if m in evals] + [
        m for m in evals if m not in ("unet_only", "gated")
    ]
    lines += [
        "## Calcium presence per artery and patient (Table 6)",
        "",
        "A vessel is positive when its Agatston score is > 0; precision, recall and F1 over "
        "patients; Average = unweighted mean over the four arteries.",
        "",
        presence_table(evals, modes),
        "",
    ]
    lines += [
        "## Per patient: total Agatston (paper4 risk class)",
        "",
        patient_table(evals, modes),
        "",
    ]
    for mode in modes:
        lines += _mode_section(evals[mode], MODE_TITLES.get(mode, mode), out, mode)
    if nongated is not None:
        lines += _mode_section(nongated, "Non-gated scans against scores.xlsx", out, "nongated")
        if "presence" in nongated:
            table = presence_table({"nongated": nongated}, ["nongated"])
            lines += ["Per-artery presence (non-gated):", "", table, ""]
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
