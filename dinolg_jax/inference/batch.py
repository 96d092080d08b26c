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
    seg/<study>.<mode>.scores.sr.dcm    DICOM SR (TID 1500) of the scores, referencing the
                                        SEG and the source series (with ``write_seg``)
    summary.json                  counts, errors, throughput (slices/s, studies/s) per mode,
                                  ``seg_skipped`` (studies without a SEG, and why) and
                                  ``studies`` (scored, skipped, failed)

A study is read once and scored in every mode. Each study whose models' input shapes
are new (``CacPipeline.warmup_plan`` of its slice size and pixel spacing: a study
resampled to the segmenter's grid runs another compiled function than one scored as
it is) first compiles them (``CacPipeline.warmup``), so per-study timings exclude
compilation (``compile_s`` in the summary, keyed by that plan, e.g. ``gate 16x16;
segmenter 16x16``). A study whose reading fails (a corrupt
DICOM, a malformed XML, a missing folder) or whose scoring raises gets an error row with
the stage, the exception class and its message with the source root's path removed (no
header value is ever in those messages); the other studies complete.

Every study gets its off-domain warnings (``inference.domain_warnings``: slice
thickness, tube voltage, contrast, spacing / field of view outside the segmenter's
training range) in the ``warnings`` column and its JSON; a warning never changes a
score. With ``kvp_adjusted`` a study at a tube voltage with a published adjusted
threshold (100 kVp: 147 HU) is scored at that threshold, and its warning says so.
A reference (the ``true_*`` columns) is the study's labels or its task's reference
scores (non-gated: ``scores.xlsx``); a study without one has blank ``true_*`` cells,
never 0.

**Resume** (``resume=True``): a study whose JSON in every mode says it was scored (no
error) with the same models (``models_fingerprint``: the params checksums, names,
threshold and scoring options) from the same source (``StudyTask.fingerprint``), and
whose requested NIfTI / SEG / SR files exist, is skipped: its CSV row is the one its
JSON stored, its result is rebuilt from that JSON for the summary and the report; a
changed model or source scores it again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from dinolg_jax.data import coca
from dinolg_jax.data.volume import CTVolume
from dinolg_jax.inference import domain_warnings, nifti, prefetch
from dinolg_jax.inference import seg as seg_lib
from dinolg_jax.inference import sr as sr_lib
from dinolg_jax.inference.sources import StudyTask
from dinolg_jax.inference.system import MODES, CacPipeline, StudyResult
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime.json_file import write_json
from dinolg_jax.scoring.agatston import (
    CONVENTION_OPTIONS,
    VESSELS,
    cac_drs,
    risk_category,
)

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
    "warnings",  # off-domain warnings, "; "-separated (inference.domain_warnings)
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


def convention(
    results: dict[str, Sequence[StudyResult]], resumed: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The Agatston options the results were scored with (``CONVENTION_OPTIONS``).

    Taken from the first scored result's ``AgatstonResult.convention``, else from
    ``resumed`` (the convention a skipped study's JSON stored); None when neither.
    """
    for rows in results.values():
        for r in rows:
            if r.scores is not None:
                return {k: r.scores.convention[k] for k in CONVENTION_OPTIONS}
    if resumed:
        return {k: resumed[k] for k in CONVENTION_OPTIONS}
    return None


def reference_summary(scores: Mapping[str, float]) -> dict[str, Any]:
    """A reference given as scores (``scores.xlsx``) in :func:`score_summary`'s form.

    Volume, mass and lesion count are unknown (None); CAC-DRS is None when the row's
    total disagrees with its vessels (``cac_drs`` refuses it).
    """
    per_vessel = {v: float(scores[v]) for v in VESSELS}
    total = float(scores["total"])
    try:
        drs = cac_drs(per_vessel, total)
    except ValueError:
        drs = None
    out: dict[str, Any] = {"total": total, "per_vessel": per_vessel, "volume_mm3": None,
                           "mass_mg": None, "num_lesions": None}  # fmt: skip
    for scheme in ("paper4", "standard5"):
        out[scheme] = risk_category(total, scheme)
    out["cac_drs"] = drs
    return out


def csv_row(result: StudyResult, warnings: Sequence[str] = ()) -> dict[str, Any]:
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
        row.update(true_total=num(t["total"]), true_cac_drs=t["cac_drs"] or "")
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
    row["warnings"] = "; ".join(warnings)
    return row


def _safe_name(study_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in study_id)


def _output_paths(out: Path, name: str, mode: str) -> dict[str, Path]:
    return {
        "ct": out / "nifti" / f"{name}.ct.nii.gz",
        "labels": out / "nifti" / f"{name}.{mode}.labels.nii.gz",
        "seg": out / "seg" / f"{name}.{mode}.labels.seg.dcm",
        "sr": out / "seg" / f"{name}.{mode}.scores.sr.dcm",
    }


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
    paths = _output_paths(out, name, result.mode)
    if write_nifti:
        ct = None if name in ct_written else paths["ct"]
        nifti.write_study(ct, paths["labels"], study, result.labels, note=result.mode)
        ct_written.add(name)
    if write_seg and study.study_id not in seg_skipped:
        try:
            seg_lib.write_seg(paths["seg"], study, result.labels)
        except seg_lib.SegUnavailable as e:
            seg_skipped[study.study_id] = str(e)
            return
        sr_lib.write_sr(paths["sr"], study, result, paths["seg"])


def models_fingerprint(pipeline: CacPipeline) -> str:
    """SHA-256 over what decides a study's scores: the models' params checksums and
    names, the gate threshold and the scoring options (resume skips a study only when
    it equals the one its JSON stored)."""
    parts: dict[str, Any] = {
        "segmenter": [pipeline.seg_name, ckpt_lib.params_checksum(pipeline.seg_runner.params)],
        "threshold": pipeline.threshold,
        "scoring": {k: pipeline.scoring[k] for k in sorted(pipeline.scoring)},
    }
    if pipeline.gate_runner is not None:
        parts["gate"] = [pipeline.gate_name, ckpt_lib.params_checksum(pipeline.gate_runner.params)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def _threshold(pipeline: CacPipeline, threshold_hu: float | None) -> Iterator[None]:
    """Scores with ``threshold_hu`` inside the block (None: the pipeline's own)."""
    if threshold_hu is None:
        yield
        return
    saved = pipeline.scoring
    pipeline.scoring = {**saved, "threshold_hu": float(threshold_hu)}
    try:
        yield
    finally:
        pipeline.scoring = saved


def _study_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _resumable(
    out: Path,
    task: StudyTask,
    modes: Sequence[str],
    models: str,
    *,
    outputs: Sequence[str],
) -> list[dict[str, Any]] | None:
    """The stored JSON of each mode when ``task`` can be skipped (module doc), else None."""
    if task.fingerprint is None:
        return None
    name = _safe_name(task.study_id)
    stored = [_study_json(out / "studies" / f"{name}.{mode}.json") for mode in modes]
    if any(d is None or d.get("error") or not d.get("resume") for d in stored):
        return None
    try:
        source = task.fingerprint()
    except OSError:
        return None
    for mode, d in zip(modes, stored, strict=True):
        r = d["resume"]
        if r.get("models") != models or r.get("source") != source or "csv_row" not in r:
            return None
        paths = _output_paths(out, name, mode)
        if any(not paths[k].is_file() for k in outputs if k in r.get("outputs", outputs)):
            return None
    return stored


def _result_from_json(d: dict[str, Any]) -> StudyResult:
    """A skipped study's result, rebuilt from its JSON (scores as stored; no lesions)."""
    probs = d.get("probabilities")
    return StudyResult(
        d["study"],
        d["mode"],
        num_slices=int(d["num_slices"]),
        flagged=np.asarray(d["flagged_slices"], np.int64),
        probabilities=None if probs is None else np.asarray(probs, np.float32),
        summary=d["prediction"],
        truth=d["truth"],
        timings={},
    )


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
    resume: bool = False,
    kvp_adjusted: bool = False,
    domain: domain_warnings.TrainedDomain | None = None,
    warning_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Scores every task in every mode and writes the outputs listed in the module doc.

    Args:
      pipeline: the built :class:`CacPipeline`.
      tasks: studies to score.
      out_dir: output folder (created).
      modes: subset of ("gated", "unet_only").
      write_nifti: also write label (and CT) volumes as NIfTI.
      write_seg: also write the labels as DICOM SEG and the scores as DICOM SR (studies
        read from DICOM with the UIDs a SEG needs; the others are listed in the
        summary's ``seg_skipped``).
      source_roots: paths stripped from error messages.
      progress: wraps the list of studies to score (e.g. ``tqdm.tqdm``) for a progress bar.
      resume: skip the studies already scored with the same models and source.
      kvp_adjusted: score a study at the published kVp-adjusted threshold where there is
        one (``domain_warnings.kvp_threshold``).
      domain: the segmenter's training range, for the spacing / field-of-view warning.
      warning_options: keyword options of ``domain_warnings.study_warnings``
        (``thickness_mm``, ``contrast_hu``, ``tolerance``).

    Returns:
      The summary (also ``summary.json``), with ``results``: {mode: [StudyResult]}
      kept in memory only (skipped studies' rebuilt from their JSON), and
      ``resumed_convention``.
    """
    modes = tuple(modes)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    out = Path(out_dir)
    (out / "studies").mkdir(parents=True, exist_ok=True)
    keep = bool(write_nifti or write_seg)
    outputs = [k for k, on in (("labels", write_nifti), ("ct", write_nifti),
                               ("seg", write_seg), ("sr", write_seg)) if on]  # fmt: skip
    models = models_fingerprint(pipeline)
    warn_opts = dict(warning_options or {})
    results: dict[str, list[StudyResult]] = {m: [] for m in modes}
    ct_written: set[str] = set()
    seg_skipped: dict[str, str] = {}
    compiled: dict[str, float] = {}  # warmup plan -> compile seconds (excluded from timings)
    counts = {"scored": 0, "skipped": 0, "failed": 0}
    study_warnings: dict[str, list[str]] = {}
    resumed_convention = None
    t_start = time.perf_counter()
    stored = {t.study_id: _resumable(out, t, modes, models, outputs=outputs) if resume else None
              for t in tasks}  # fmt: skip
    todo = [t for t in tasks if stored[t.study_id] is None]
    iterable = progress(todo) if progress is not None else todo
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for task in tasks:  # the skipped studies' rows first, as stored
            for d in stored[task.study_id] or []:
                results[d["mode"]].append(_result_from_json(d))
                if d.get("warnings"):
                    study_warnings[task.study_id] = list(d["warnings"])
                writer.writerow(d["resume"]["csv_row"])
                resumed_convention = resumed_convention or d.get("convention")
            counts["skipped"] += stored[task.study_id] is not None
        f.flush()
        # The next study is read (in a background thread) while this one is scored.
        loads = prefetch.Prefetcher(prefetch.timed_calls(task.load for task in todo))
        for task, (study, error, t_read) in zip(iterable, loads, strict=True):
            read_error = warnings = threshold_hu = None
            extra: dict[str, Any] = {}
            if error is not None:
                read_error = {"stage": "read", "type": type(error).__name__}
                read_error["message"] = clean_message(error, source_roots)
            else:
                note = ""
                adjusted = domain_warnings.kvp_threshold(study.kvp) if kvp_adjusted else None
                if adjusted is not None:
                    threshold_hu = adjusted[0]
                    note = f"scored at {adjusted[0]:g} HU ({adjusted[1]})"
                elif kvp_adjusted:
                    note = "no published adjusted threshold for it: scored at the configured one"
                warnings = domain_warnings.study_warnings(
                    study, domain=domain, threshold_note=note, **warn_opts
                )
                if warnings:
                    study_warnings[task.study_id] = warnings
                choice = getattr(study.report, "to_dict", None)
                if choice is not None and hasattr(study.report, "reason"):
                    extra["series"] = choice()
                    logging.info("%s: %s", task.study_id, study.report.reason)
            failed = False
            for mode in modes:
                if read_error is not None:
                    result = StudyResult(task.study_id, mode, error=dict(read_error))
                    result.timings = {"read": t_read, "total": t_read}
                else:
                    shape = tuple(int(d) for d in study.hu.shape[1:])
                    if len(shape) == 2:  # compile what scoring this study will use
                        plan = pipeline.warmup_plan(shape, study.pixel_mm)
                        key = "; ".join(f"{name} {h}x{w}" for name, (h, w) in plan)
                        if key not in compiled:
                            compiled[key] = pipeline.warmup(shape, study.pixel_mm)
                    t1 = time.perf_counter()
                    try:
                        with _threshold(pipeline, threshold_hu):
                            result = pipeline.score(study, mode, keep_labels=keep)
                        if result.truth is None and task.reference is not None:
                            result.truth = reference_summary(task.reference)
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
                failed = failed or result.error is not None
                results[mode].append(result)
                row = csv_row(result, warnings or ())
                record = {**result.to_dict(), "warnings": warnings, **extra}
                if task.fingerprint is not None and result.error is None:
                    record["resume"] = {"models": models, "source": task.fingerprint(),
                                        "outputs": outputs, "csv_row": row}  # fmt: skip
                write_json(out / "studies" / f"{_safe_name(task.study_id)}.{mode}.json", record)
                writer.writerow(row)
            counts["failed" if failed else "scored"] += 1
            f.flush()
    wall = time.perf_counter() - t_start
    summary = summarise(results, wall)
    summary["studies"] = counts
    summary["warnings"] = study_warnings
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
    summary["resumed_convention"] = resumed_convention
    return summary


def warning_notes(warnings: Mapping[str, Sequence[str]]) -> list[str]:
    """Report lines: how many studies carry each kind of off-domain warning, and which.

    Args:
      warnings: ``{study: [warning]}`` (``summary["warnings"]``).
    """
    kinds: dict[str, list[str]] = {}
    for study, values in warnings.items():
        for w in values:
            kind = re.split(r"[\d(:;]", w, maxsplit=1)[0].strip()
            kinds.setdefault(kind, []).append(study)
    return [
        f"Off-domain warning '{k}' on {len(v)} studies: {', '.join(sorted(set(v)))} "
        "(results.csv, column warnings; scores unchanged)."
        for k, v in sorted(kinds.items())
    ]


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
    # The fields below are configs/infer.py's (an experiment's infer stage has none).
    warn = config.get("warnings") or {}
    options = {k: warn[k] for k in ("contrast_hu", "tolerance") if k in warn}
    if "thickness_mm" in warn:
        options["thickness_mm"] = tuple(float(v) for v in warn["thickness_mm"])
    summary = run_inference(
        pipe,
        tasks,
        config.out_dir,
        modes=modes,
        write_nifti=bool(config.write_nifti),
        write_seg=bool(config.write_seg),
        source_roots=roots,
        progress=progress,
        resume=bool(config.get("resume", False)),
        kvp_adjusted=bool(config.get("kvp_adjusted_threshold", False)),
        domain=domain_warnings.trained_domain(config.segmenter_workdir),
        warning_options=options,
    )
    summary["report"] = summary["evals"] = None
    if not config.report:
        return summary
    results = summary["results"]
    truth, preds = scores_from_results(results)
    notes = [config.note] if config.note else []
    notes += warning_notes(summary["warnings"])
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
    scored_with = convention(results, summary.get("resumed_convention"))
    if scored_with is None:  # no study was scored: nothing to report
        return summary
    out = Path(config.out_dir)
    path = report_lib.write_report(out / "report", evals, scored_with, notes=notes)
    summary["report"] = str(path)
    return summary
