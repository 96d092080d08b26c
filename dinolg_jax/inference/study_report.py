"""One study's printed report and PNG overlays (``tools/score_study.py``).

:func:`format_report` renders a :class:`~dinolg_jax.inference.system.StudyResult` as
plain text: the per-vessel table (Agatston, volume, lesion count), the total, the risk
categories (paper4 and standard5), CAC-DRS, the flagged slices and the Agatston
convention used, the grid each model saw the study at when it was resampled, the
series read (and why) and the study's off-domain warnings (``domain_warnings``).
:func:`write_overlays` saves one PNG per slice with predicted calcium: the slice in a
soft-tissue/calcium window (stated under the image; canonical layout: anterior at the
top, the patient's left on the image's right, as radiologists read axial CT, with
L/R and A/P markers at the edges taken from the study's geometry), the scored lesion
pixels coloured by artery with a legend (artery and its score on the slice), lesions
below the minimum area drawn in magenta and named so in the legend ("not scored"), and
in the title what a reader finds the slice by in the PACS: its DICOM InstanceNumber
and its position (ImagePositionPatient z, mm); a study without InstanceNumbers (NIfTI)
gives the 1-based slice number from the most inferior.
:func:`write_outputs` writes the overlays plus ``ct.nii.gz``, ``labels.nii.gz`` and, for
studies read from DICOM, ``labels.seg.dcm`` into one folder (``tools/score_study.py``):
the labels are the scored voxels only (``StudyResult.labels``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dinolg_jax.data.volume import CTVolume
from dinolg_jax.inference.system import StudyResult
from dinolg_jax.scoring.agatston import VESSELS

# Vessel label -> RGB (RCA red, LAD green, LCA blue, LCX yellow).
VESSEL_COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 0.9, 0.2), 3: (0.3, 0.5, 1.0), 4: (1.0, 0.9, 0.1)}
SMALL_COLOUR = (1.0, 0.3, 1.0)  # magenta: candidate lesions below the minimum area
DISPLAY_WINDOW_HU = (-200.0, 800.0)
# LPS axis -> patient-side letter of its + and - direction.
_SIDES = (("L", "R"), ("P", "A"), ("S", "I"))


def format_report(result: StudyResult, warnings: Sequence[str] = (), series: str = "") -> str:
    """Plain-text report of one scored study (no identifying values: only the study id).

    Args:
      result: the scored study (or its error row).
      warnings: its off-domain warnings (``domain_warnings.study_warnings``), listed
        under the scores, which they never change.
      series: why its series was read (``series_choice.SeriesChoice.reason``); "" none.
    """
    notes = [f"Series: {series}"] if series else []
    if warnings:
        notes.append(f"Off-domain warnings ({len(warnings)}; the scores are unchanged):")
        notes += [f"  - {w}" for w in warnings]
    if result.error is not None:
        e = result.error
        head = f"Study {result.study_id}: FAILED at {e['stage']}: {e['type']}: {e['message']}"
        return "\n".join([head, *notes])
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
    for model, grid in result.resampled.items():
        lines.append(f"Resampled for the {model}: {grid}")
    lines += notes
    t = result.timings
    lines.append(
        "Timings (s): "
        + ", ".join(
            f"{k} {t[k]:.3f}" for k in ("read", "compile", "gate", "segment", "score") if k in t
        )
    )
    return "\n".join(lines)


def small_lesions(
    hu: np.ndarray, labels: np.ndarray, convention: dict, pixel_mm: tuple[float, float]
) -> np.ndarray:
    """bool [H, W]: calcium pixels of one slice in lesions below the minimum area.

    The same rule as ``scoring.agatston``: per vessel, in-plane connected components
    (``convention["connectivity"]``) of labelled pixels with HU >= ``threshold_hu``; a
    component is below the minimum when its area < ``min_area_mm2``.
    """
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(2, 1 if convention["connectivity"] == 4 else 2)
    out = np.zeros(hu.shape, bool)
    area_px = pixel_mm[0] * pixel_mm[1]
    for v in VESSEL_COLOURS:
        comp, n = ndimage.label((labels == v) & (hu >= convention["threshold_hu"]), structure)
        if n:
            sizes = np.bincount(comp.ravel(), minlength=n + 1) * area_px
            small = np.flatnonzero(sizes < convention["min_area_mm2"] * (1 - 1e-9))
            out |= np.isin(comp, small[small > 0])
    return out


def side_letter(direction: tuple[float, ...]) -> str:
    """The patient side an LPS direction points to most ("L", "R", "A", "P", "S", "I")."""
    axis = int(np.argmax(np.abs(direction)))
    return _SIDES[axis][0 if direction[axis] > 0 else 1]


def orientation_markers(study: CTVolume) -> dict[str, str]:
    """The patient side at each image edge: ``{"top", "bottom", "left", "right"}``."""
    col = study.geometry.col_dir  # increasing column: towards the image's right edge
    row = study.geometry.row_dir  # increasing row: towards the bottom edge
    return {
        "right": side_letter(col),
        "left": side_letter(tuple(-v for v in col)),
        "bottom": side_letter(row),
        "top": side_letter(tuple(-v for v in row)),
    }


def slice_name(study: CTVolume, z: int) -> str:
    """How a reader finds slice ``z`` in the PACS: its InstanceNumber and position."""
    numbers = getattr(study.source, "instance_numbers", None)
    position = f"z = {study.z_mm[z]:.1f} mm"
    if numbers is not None and numbers[z] is not None:
        return f"InstanceNumber {numbers[z]}, {position}"
    return f"slice {z + 1} of {len(study.hu)} from the feet, {position}"


def _unscored_on(result: StudyResult, z: int, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    if result.unscored is not None and len(result.unscored):
        pts = result.unscored[result.unscored[:, 0] == z]
        out[pts[:, 1], pts[:, 2]] = True
    return out


def overlay_slice(
    study: CTVolume, result: StudyResult, labels: np.ndarray, z: int
) -> tuple[np.ndarray, str, list[tuple[str, tuple[float, float, float]]]]:
    """One overlay: (RGB float [H, W, 3], title, legend [(text, colour)]).

    Scored calcium (labelled, HU >= threshold, in a lesion of at least the minimum area)
    takes its artery's colour, calcium in smaller lesions ``SMALL_COLOUR`` (from
    ``result.unscored``, or found in ``labels`` when they are not only the scored
    voxels); the legend gives each artery's Agatston on this slice and names the small
    lesions "not scored"; the title gives :func:`slice_name` and the display window.
    """
    conv = result.scores.convention
    threshold = float(conv["threshold_hu"])
    hu = study.hu[z].astype(np.float32)
    lo, hi = DISPLAY_WINDOW_HU
    grey = np.clip((hu - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    below = small_lesions(study.hu[z], labels[z], conv, study.pixel_mm)
    below |= _unscored_on(result, z, hu.shape)
    calcium = (labels[z] > 0) & (hu >= threshold) & ~below
    legend = []
    for v, colour in VESSEL_COLOURS.items():
        rgb[calcium & (labels[z] == v)] = colour
        name = VESSELS[v - 1]
        score = sum(
            les.score for les in result.scores.lesions if les.slice == z and les.vessel == name
        )
        legend.append((f"{name}: {score:.1f}", colour))
    rgb[below] = SMALL_COLOUR
    legend.append((f"< {conv['min_area_mm2']:g} mm\u00b2 (not scored)", SMALL_COLOUR))
    title = (
        f"{result.study_id}  {slice_name(study, z)}\n"
        f"window {lo:g} to {hi:g} HU (W {hi - lo:g} L {(hi + lo) / 2:g}); "
        f"calcium >= {threshold:g} HU; Agatston on this slice by artery"
    )
    return rgb, title, legend


def write_overlays(
    out_dir: str | os.PathLike,
    study: CTVolume,
    result: StudyResult,
    labels: np.ndarray,
) -> list[Path]:
    """One PNG per slice with predicted calcium (:func:`overlay_slice`), slice order.

    Args:
      out_dir: folder (created).
      study: the scanned volume (canonical layout).
      result: its result (lesions give the scored slices and their scores; the
        threshold, connectivity and minimum area come from its convention).
      labels: uint8 [Z, H, W] predicted labels (``score(..., keep_labels=True)``).

    Returns:
      The files written (``slice_<index>.png``): slices with a scored lesion or with
      calcium in lesions below the minimum area.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conv = result.scores.convention
    small = {
        int(z)
        for z in np.flatnonzero(np.any(labels > 0, axis=(1, 2)))
        if small_lesions(study.hu[z], labels[z], conv, study.pixel_mm).any()
    }
    if result.unscored is not None:
        small |= {int(z) for z in np.unique(result.unscored[:, 0])}
    markers = orientation_markers(study)
    where = {
        "top": (0.5, 0.985, "center", "top"),
        "bottom": (0.5, 0.015, "center", "bottom"),
        "left": (0.015, 0.5, "left", "center"),
        "right": (0.985, 0.5, "right", "center"),
    }
    paths = []
    for z in sorted({les.slice for les in result.scores.lesions} | small):
        rgb, title, legend = overlay_slice(study, result, labels, z)
        fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=100)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        for edge, (x, y, ha, va) in where.items():
            ax.text(x, y, markers[edge], transform=ax.transAxes, ha=ha, va=va, fontsize=11,
                    color="yellow", fontweight="bold")  # fmt: skip
        handles = [Patch(facecolor=c, edgecolor="none", label=t) for t, c in legend]
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.8)
        ax.axis("off")
        fig.tight_layout()
        path = out / f"slice_{z:04d}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(
    out_dir: str | os.PathLike, study: CTVolume, result: StudyResult, labels: np.ndarray
) -> dict[str, object]:
    """Overlays, ``ct.nii.gz``, ``labels.nii.gz`` and (DICOM sources) ``labels.seg.dcm``.

    Returns:
      ``{"overlays": [paths], "nifti": [ct, labels], "seg": path or None,
      "seg_skipped": reason or ""}``.
    """
    from dinolg_jax.inference import nifti
    from dinolg_jax.inference import seg as seg_lib

    out = Path(out_dir)
    written: dict[str, object] = {"overlays": write_overlays(out, study, result, labels)}
    written["nifti"] = nifti.write_study(
        out / "ct.nii.gz", out / "labels.nii.gz", study, labels, note=result.mode
    )
    written["seg"], written["seg_skipped"] = None, ""
    try:
        written["seg"] = seg_lib.write_seg(out / "labels.seg.dcm", study, labels)
    except seg_lib.SegUnavailable as e:
        written["seg_skipped"] = str(e)
    return written


def load_study(path: str | os.PathLike, series_uid: str = "") -> CTVolume:
    """A DICOM study folder, or a ``.nii`` / ``.nii.gz`` CT in HU, as a CTVolume.

    Args:
      path: the folder or file.
      series_uid: SeriesInstanceUID of the series to read from a DICOM folder holding
        several ("": ``inference.series_choice`` chooses); a NIfTI file has none, so
        giving one for it is a ``ValueError``.
    """
    from dinolg_jax.inference import nifti_input, sources

    if nifti_input.is_nifti_path(path):
        if series_uid:
            raise ValueError(f"{Path(path).name}: a NIfTI file has no series to choose from")
        return nifti_input.read_nifti_ct(path)
    return sources.load_dicom_study(path, series_uid=series_uid)


def series_reason(study: CTVolume) -> str:
    """Which series of a DICOM study folder was read and why ("" for other studies)."""
    reason = getattr(study.report, "reason", "")
    return reason if isinstance(reason, str) else ""


def score_folder(pipeline, folder: str | os.PathLike, mode: str = "gated", series_uid: str = ""):
    """Reads one study (:func:`load_study`, ``series_uid`` forcing a series) and scores
    it; returns (study, result, labels [Z, H, W], the scored voxels)."""
    import time

    t0 = time.perf_counter()
    study = load_study(folder, series_uid)
    t_read = time.perf_counter() - t0
    # so the timings exclude compilation
    t_compile = pipeline.warmup(study.hu.shape[1:], study.pixel_mm)
    result = pipeline.score(study, mode, keep_labels=True)
    result.timings.update(read=t_read, compile=t_compile)
    labels = result.labels
    return study, result, labels
