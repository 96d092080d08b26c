"""Scoring many studies: the loop, error rows, and the output files.

:func:`run_inference` scores every :class:`~dinolg_jax.inference.sources.StudyTask` in
each requested mode and writes, under ``out_dir``::

    studies/<study>.<mode>.json   per-study result (scores, lesions, flagged slices,
                                  gate probabilities, timings, convention) or the error
    results.csv                   one row per (study, mode); see CSV_COLUMNS
    nifti/<study>.<mode>.labels.nii.gz  predicted labels, uint8 (with ``write_nifti``), and
    nifti/<study>.ct.nii.gz             the HU volume, int16, on the same grid: both on the
                                        study's real geometry (they overlay the DICOM)
    seg/<study>.<mode>.labels.seg.dcm   DICOM SEG of the predicted labels referencing the
                                        source slices (with ``write_seg``, DICOM sources)
    summary.json                  counts, errors, throughput (slices/s, studies/s) per mode,
                                  and ``seg_skipped`` (studies without a SEG, and why)

A study is read once and scored in every mode. Each new slice size first compiles the
models (``CacPipeline.warmup``), so per-study timings exclude compilation (reported as
``compile_s`` in the summary). A study whose reading fails (a corrupt
DICOM, a malformed XML, a missing folder) or whose scoring raises gets an error row with
the stage, the exception class and its message with the source root's path removed (no
header value is ever in those messages); the other studies complete.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dinolg_jax.data import coca
from dinolg_jax.data.volume import CTVolume
from dinolg_jax.inference import nifti, prefetch
from dinolg_jax.inference import seg as seg_lib
from dinolg_jax.inference.sources import StudyTask
from dinolg_jax.inference.system import MODES, CacPipeline, StudyResult
from dinolg_jax.runtime.json_file import write_json
from dinolg_jax.scoring.agatston import CONVENTION_OPTIONS, VESSELS

_TRUTH = [f"true_{k}" for k in (*VESSELS, "total", "paper4", "standard5", "cac_drs")]
CSV_COLUMNS: tuple[str, ...] = (
    "study",
    "mode",
    "status",
    "num_slices",
    "num_flagged",
    "flagged_slices",  # space-separated slice indices (z ascending)
    *VESSELS,
    "total",
    "volume_mm3",
    "mass_mg",
    "paper4",
    "standard5",
    "cac_drs",
    *_TRUTH,
    "t_read_s",
    "t_gate_s",
    "t_segment_s",
    "t_score_s",
    "t_total_s",
    "error_stage",
    "error_type",
    "error_message",
)
_MAX_MESSAGE = 300


def clean_message(exc: BaseException, roots: Sequence[str | os.PathLike] = ()) -> str:
    """The exception's message on one line, source-root paths removed, at most 300 chars."""
    text = str(exc)
    for root in roots:
        text = coca.strip_root(text, root)
    text = " ".join(text.split())
    return text[:_MAX_MESSAGE]


def _rounded(x: Any) -> float:
    """A score as results.csv holds it (4 decimals); evaluation uses the same values."""
    return round(float(x), 4)


def _scores(summary: dict[str, Any]) -> dict[str, float]:
    """``{"RCA", "LAD", "LCA", "LCX", "total"}`` of a :func:`score_summary`, as in the CSV."""
    return {**{v: _rounded(summary["per_vessel"][v]) for v in VESSELS},
            "total": _rounded(summary["total"])}  # fmt: skip


def scores_from_results(
    results: dict[str, Sequence[StudyResult]],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
    """Reference and predicted per-patient scores of :func:`run_inference`'s results.

    The values results.csv holds (4 decimals), so an evaluation of the CSV is the same.

    Args:
      results: ``{mode: [StudyResult]}``.

    Returns:
      ``(truth {study: scores}, {mode: {study: scores}})``, scores ``{"RCA", "LAD",
      "LCA", "LCX", "total"}`` (``eval.report.Scores``); error results and results
      without a reference contribute no truth; error results no prediction.
    """
    truth: dict[str, dict[str, float]] = {}
    preds: dict[str, dict[str, dict[str, float]]] = {}
    for mode, rows in results.items():
        for r in rows:
            if r.error is not None:
                continue
            preds.setdefault(mode, {})[r.study_id] = _scores(r.summary)
            if r.truth is not None:
                truth[r.study_id] = _scores(r.truth)
    return truth, preds


def convention(results: dict[str, Sequence[StudyResult]]) -> dict[str, Any] | None:
    """The Agatston options the results were scored with (``CONVENTION_OPTIONS``).

    Taken from the first scored result's ``AgatstonResult.convention``; None when no
    study was scored.
    """
    for rows in results.values():
        for r in rows:
            if r.scores is not None:
                return {k: r.scores.convention[k] for k in CONVENTION_OPTIONS}
    return None


def csv_row(result: StudyResult) -> dict[str, Any]:
    """The CSV row of one result (floats rounded to 4 decimals, missing values empty)."""

    def num(x: Any) -> Any:
        return "" if x is None else _rounded(x)

    row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, "")
    row.update(study=result.study_id, mode=result.mode, num_slices=result.num_slices)
    row["status"] = "error" if result.error else "ok"
    row["num_flagged"] = len(result.flagged)
    row["flagged_slices"] = " ".join(str(int(i)) for i in result.flagged)
    if result.summary is not None:
        s = result.summary
        row.update({v: num(s["per_vessel"][v]) for v in VESSELS})
        row.update(total=num(s["total"]), volume_mm3=num(s["volume_mm3"]))
        row.update(mass_mg=num(s["mass_mg"]), cac_drs=s["cac_drs"])
        row.update(paper4=s["paper4"], standard5=s["standard5"])
    if result.truth is not None:
        t = result.truth
        row.update({f"true_{v}": num(t["per_vessel"][v]) for v in VESSELS})
        row.update(true_total=num(t["total"]), true_cac_drs=t["cac_drs"])
        row.update(true_paper4=t["paper4"], true_standard5=t["standard5"])
    for key in ("read", "gate", "segment", "score", "total"):
        if key in result.timings:
            row[f"t_{key}_s"] = round(float(result.timings[key]), 5)
    if result.error:
        row.update(
            error_stage=result.error["stage"],
            error_type=result.error["type"],
            error_message=result.error["message"],
        )
    return row


def _safe_name(study_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in study_id)


def _write_volumes(
    out: Path,
    study: CTVolume,
    result: StudyResult,
    *,
    write_nifti: bool,
    write_seg: bool,
    ct_written: set,
    seg_skipped: dict[str, str],
) -> None:
    name = _safe_name(study.study_id)
    if write_nifti:
        ct = None if name in ct_written else out / "nifti" / f"{name}.ct.nii.gz"
        labels = out / "nifti" / f"{name}.{result.mode}.labels.nii.gz"
        nifti.write_study(ct, labels, study, result.labels, note=result.mode)
        ct_written.add(name)
    if write_seg and study.study_id not in seg_skipped:
        try:
            path = out / "seg" / f"{name}.{result.mode}.labels.seg.dcm"
            seg_lib.write_seg(path, study, result.labels)
        except seg_lib.SegUnavailable as e:
            seg_skipped[study.study_id] = str(e)


def run_inference(
    pipeline: CacPipeline,
    tasks: Sequence[StudyTask],
    out_dir: str | os.PathLike,
    *,
    modes: Sequence[str] = ("gated",),
    write_nifti: bool = False,
    write_seg: bool = False,
    source_roots: Sequence[str | os.PathLike] = (),
    progress: Callable[[Sequence[StudyTask]], Any] | None = None,
) -> dict[str, Any]:
    """Scores every task in every mode and writes the outputs listed in the module doc.

    Args:
      pipeline: the built :class:`CacPipeline`.
      tasks: studies to score.
      out_dir: output folder (created).
      modes: subset of ("gated", "unet_only").
      write_nifti: also write label (and CT) volumes as NIfTI.
      write_seg: also write the labels as DICOM SEG (studies read from DICOM with the UIDs
        a SEG needs; the others are listed in the summary's ``seg_skipped``).
      source_roots: paths stripped from error messages.
      progress: wraps the task list (e.g. ``tqdm.tqdm``) for a progress bar.

    Returns:
      The summary (also ``summary.json``), with ``results``: {mode: [StudyResult]}
      kept in memory only.
    """
    modes = tuple(modes)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    out = Path(out_dir)
    (out / "studies").mkdir(parents=True, exist_ok=True)
    keep = bool(write_nifti or write_seg)
    results: dict[str, list[StudyResult]] = {m: [] for m in modes}
    ct_written: set[str] = set()
    seg_skipped: dict[str, str] = {}
    compiled: dict[str, float] = {}  # slice shape -> compile seconds (excluded from timings)
    t_start = time.perf_counter()
    iterable = progress(tasks) if progress is not None else tasks
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        # The next study is read (in a background thread) while this one is scored.
        loads = prefetch.Prefetcher(prefetch.timed_calls(task.load for task in tasks))
        for task, (study, error, t_read) in zip(iterable, loads, strict=True):
            read_error = None
            if error is not None:
                read_error = {"stage": "read", "type": type(error).__name__}
                read_error["message"] = clean_message(error, source_roots)
            for mode in modes:
                if read_error is not None:
                    result = StudyResult(task.study_id, mode, error=dict(read_error))
                    result.timings = {"read": t_read, "total": t_read}
                else:
                    shape = tuple(int(d) for d in study.hu.shape[1:])
                    if str(shape) not in compiled and len(shape) == 2:
                        compiled[str(shape)] = pipeline.warmup(shape)
                    t1 = time.perf_counter()
                    try:
                        result = pipeline.score(study, mode, keep_labels=keep)
                        if keep:
                            _write_volumes(
                                out,
                                study,
                                result,
                                write_nifti=write_nifti,
                                write_seg=write_seg,
                                ct_written=ct_written,
                                seg_skipped=seg_skipped,
                            )
                            result.labels = None
                    except Exception as e:
                        result = StudyResult(task.study_id, mode, num_slices=len(study.hu))
                        result.error = {
                            "stage": "score",
                            "type": type(e).__name__,
                            "message": clean_message(e, source_roots),
                        }
                    result.timings["read"] = t_read
                    result.timings["total"] = t_read + time.perf_counter() - t1
                results[mode].append(result)
                write_json(
                    out / "studies" / f"{_safe_name(task.study_id)}.{mode}.json",
                    result.to_dict(),
                )
                writer.writerow(csv_row(result))
            f.flush()
    wall = time.perf_counter() - t_start
    summary = summarise(results, wall)
    summary["compile_s"] = compiled
    summary["scoring"] = dict(pipeline.scoring)
    summary["threshold"] = pipeline.threshold
    summary["seg_skipped"] = (
        {k: clean_message(ValueError(v), source_roots) for k, v in seg_skipped.items()}
        if write_seg
        else {}
    )
    write_json(out / "summary.json", summary)
    summary["results"] = results
    return summary


def summarise(results: dict[str, list[StudyResult]], wall_s: float) -> dict[str, Any]:
    """Counts, errors and throughput per mode.

    Throughput per mode: ``slices_per_s`` and ``studies_per_s`` over that mode's own time
    (gate + segment + score, excluding reading, which is shared by the modes), and
    ``end_to_end_studies_per_s`` over the whole run's wall time (reading included).
    """
    out: dict[str, Any] = {"wall_s": wall_s, "modes": {}}
    for mode, rows in results.items():
        ok = [r for r in rows if r.error is None]
        compute = sum(r.timings.get(k, 0.0) for r in ok for k in ("gate", "segment", "score"))
        slices = sum(r.num_slices for r in ok)
        out["modes"][mode] = {
            "studies": len(rows),
            "ok": len(ok),
            "errors": [
                {"study": r.study_id, **(r.error or {})} for r in rows if r.error is not None
            ],
            "slices": slices,
            "segmented_slices": sum(len(r.flagged) for r in ok),
            "compute_s": compute,
            "gate_s": sum(r.timings.get("gate", 0.0) for r in ok),
            "segment_s": sum(r.timings.get("segment", 0.0) for r in ok),
            "score_s": sum(r.timings.get("score", 0.0) for r in ok),
            "read_s": sum(r.timings.get("read", 0.0) for r in rows),
            "slices_per_s": slices / compute if compute > 0 else None,
            "studies_per_s": len(ok) / compute if compute > 0 else None,
            "end_to_end_studies_per_s": len(ok) / wall_s if wall_s > 0 else None,
        }
    return out


def infer_from_config(config: Any, *, progress: Callable | None = None) -> dict[str, Any]:
    """``tools/infer.py``: build the pipeline, score the source, write outputs and report.

    Args:
      config: a ``configs/infer.py`` config.
      progress: e.g. ``tqdm.tqdm``.

    Returns:
      The summary of :func:`run_inference`, plus ``report`` (the report's path or None)
      and ``evals`` (the report's evaluation, ``{mode: eval.report.evaluate_mode}``;
      None without a report). Data flows one way: the in-memory results feed the
      files and the evaluation; nothing written is read back.
    """
    from dinolg_jax.eval import report as report_lib
    from dinolg_jax.inference import loading, sources
    from dinolg_jax.runtime import mesh as mesh_lib

    if not config.out_dir:
        raise ValueError("config.out_dir is empty")
    modes = MODES if config.mode == "both" else (str(config.mode),)
    mesh = mesh_lib.mesh_from_config(config.mesh)
    tasks, roots = sources.tasks_from_source(config.source)
    pipe = loading.build_pipeline(config, mesh, need_gate="gated" in modes)
    summary = run_inference(
        pipe,
        tasks,
        config.out_dir,
        modes=modes,
        write_nifti=bool(config.write_nifti),
        write_seg=bool(config.write_seg),
        source_roots=roots,
        progress=progress,
    )
    summary["report"] = summary["evals"] = None
    if not config.report:
        return summary
    results = summary["results"]
    truth, preds = scores_from_results(results)
    notes = [config.note] if config.note else []
    source = config.source
    if source.kind == "release" and source.release_kind == "nongated":
        sheet = coca.load_nongated_scores(source.path)
        evals = {m: report_lib.evaluate_nongated(p, sheet) for m, p in preds.items()}
        notes.append(
            "Reference: the release's scores.xlsx (per-vessel and total Agatston as given; "
            "rows whose total differs from the vessel sum are kept as they are)."
        )
    elif truth:
        evals = report_lib.evaluate(truth, preds)
    else:
        return summary
    summary["evals"] = evals
    scored_with = convention(results)
    if scored_with is None:  # no study was scored: nothing to report
        return summary
    out = Path(config.out_dir)
    path = report_lib.write_report(out / "report", evals, scored_with, notes=notes)
    summary["report"] = str(path)
    return summary
