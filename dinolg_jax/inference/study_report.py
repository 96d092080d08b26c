"""One study's printed report and PNG overlays (``tools/score_study.py``).

:func:`format_report` renders a :class:`~dinolg_jax.inference.pipeline.StudyResult` as
plain text: the per-vessel table (Agatston, volume, lesion count), the total, the risk
categories (paper4 and standard5), CAC-DRS, the flagged slices and the Agatston
convention used. :func:`write_overlays` saves one PNG per slice that has calcium: the
slice in a soft-tissue/calcium window with the scored lesion pixels coloured by vessel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dinolg_jax.inference.pipeline import StudyResult, StudyVolume
from dinolg_jax.scoring.agatston import VESSELS

# Vessel label -> RGB (RCA red, LAD green, LCA blue, LCX yellow).
VESSEL_COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 0.9, 0.2), 3: (0.3, 0.5, 1.0), 4: (1.0, 0.9, 0.1)}
DISPLAY_WINDOW_HU = (-200.0, 800.0)


def format_report(result: StudyResult) -> str:
    """Plain-text report of one scored study (no identifying values: only the study id)."""
    if result.error is not None:
        e = result.error
        return f"Study {result.study_id}: FAILED at {e['stage']}: {e['type']}: {e['message']}"
    s = result.summary
    scores = result.scores
    n_les = {v: sum(1 for les in scores.lesions if les.vessel == v) for v in VESSELS}
    lines = [
        f"Study {result.study_id}  ({result.mode}, {result.num_slices} slices, "
        f"{len(result.flagged)} segmented)",
        "",
        f"{'vessel':<8}{'Agatston':>10}{'volume mm3':>12}{'lesions':>9}",
    ]
    for v in VESSELS:
        lines.append(
            f"{v:<8}{s['per_vessel'][v]:>10.1f}{scores.volume_per_vessel[v]:>12.1f}{n_les[v]:>9d}"
        )
    lines.append(f"{'total':<8}{s['total']:>10.1f}{s['volume_mm3']:>12.1f}{s['num_lesions']:>9d}")
    lines += [
        "",
        f"Risk category: {s['paper4']} (paper, 4 classes); {s['standard5']} (standard, 5 classes)",
        f"CAC-DRS: {s['cac_drs']}",
    ]
    if s["mass_mg"] is not None:
        lines.append(f"Mass score: {s['mass_mg']:.1f} mg")
    flagged = " ".join(str(int(i)) for i in result.flagged) if result.mode == "gated" else "all"
    lines.append(f"Segmented slices: {flagged}")
    c = scores.convention
    lines.append(
        f"Convention: HU >= {c['threshold_hu']:g}, {c['connectivity']}-connectivity, lesions "
        f">= {c['min_area_mm2']:g} mm2, weights by max HU (1: <200, 2: 200-299, 3: 300-399, "
        f"4: >=400), score x slice thickness / 3 = x {c['thickness_factor']:.3f} "
        f"({c['slice_thickness_mm']:g} mm slices)"
    )
    t = result.timings
    lines.append(
        "Timings (s): "
        + ", ".join(
            f"{k} {t[k]:.3f}" for k in ("read", "compile", "gate", "segment", "score") if k in t
        )
    )
    return "\n".join(lines)


def write_overlays(
    out_dir: str | os.PathLike,
    study: StudyVolume,
    result: StudyResult,
    labels: np.ndarray,
) -> list[Path]:
    """One PNG per slice with a scored lesion: the slice and its lesion pixels by vessel.

    Args:
      out_dir: folder (created).
      study: the scanned volume.
      result: its result (lesions give the slices; the threshold comes from the convention).
      labels: uint8 [Z, H, W] predicted labels (``score(..., keep_labels=True)``).

    Returns:
      The files written, slice order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threshold = float(result.scores.convention["threshold_hu"])
    slices = sorted({les.slice for les in result.scores.lesions})
    lo, hi = DISPLAY_WINDOW_HU
    paths = []
    for z in slices:
        hu = study.hu[z].astype(np.float32)
        grey = np.clip((hu - lo) / (hi - lo), 0.0, 1.0)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        calcium = (labels[z] > 0) & (hu >= threshold)
        for v, colour in VESSEL_COLOURS.items():
            rgb[calcium & (labels[z] == v)] = colour
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        ax.imshow(rgb, interpolation="nearest")
        found = [f"{les.vessel} {les.score:.1f}" for les in result.scores.lesions if les.slice == z]
        ax.set_title(f"{result.study_id} slice {z}: " + ", ".join(found), fontsize=8)
        ax.axis("off")
        fig.tight_layout()
        path = out / f"slice_{z:04d}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def score_folder(pipeline, folder: str | os.PathLike, mode: str = "gated"):
    """Reads one DICOM folder and scores it; returns (study, result, labels [Z, H, W])."""
    import time

    from dinolg_jax.inference import sources

    t0 = time.perf_counter()
    study = sources.load_dicom_study(folder)
    t_read = time.perf_counter() - t0
    t_compile = pipeline.warmup(study.hu.shape[1:])  # so the timings exclude compilation
    result = pipeline.score(study, mode, keep_labels=True)
    result.timings.update(read=t_read, compile=t_compile)
    labels = result.labels
    return study, result, labels
