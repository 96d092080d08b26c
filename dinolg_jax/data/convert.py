"""Converts a COCA release (or the phantom) into ArrayRecord shards, manifest.json, report.json.

What is COCA's is here: reading the release, labelling and scoring its studies, the
patient split, the manifest's study entries; writing the dataset (lock, cache, worker
pool, shards, report and manifest) is `dataset_writer`'s, shared with `convert_folder`.

1. Per study, in parallel worker processes (`prepare_study`): load it (`coca`), score
   its labels (`scoring.agatston`, default convention: 130 HU, 4-connectivity, 1 mm^2),
   encode one record per slice (`records`) and write them to a per-study cache file under
   ``<out>/cache/``. A cache entry whose input fingerprint (file names, sizes, mtimes,
   code version) matches is reused, so an interrupted run resumes.
2. In the main process: assign splits, then stream the cached records into the shards of
   each split and write ``report.json`` (`convert_report`) and ``manifest.json``
   (`manifest`), last.

Splits are by patient. Gated patients with valid labels (an XML, or no XML = zero
score; not unreliable, below) go to train/val/test, stratified by the paper's 4 risk
categories of their Agatston total (~80/10/10 %, as the paper's 354/44/45) and
deterministic from the seed. ``pretrain`` holds every scan (gated, including those
whose labels were left out, and non-gated) except the val/test patients. Non-gated
slices and slices of patients without valid labels carry all-zero labels (``kind``
tells them apart). Within a split, studies are ordered gated then non-gated by id,
each study's slices contiguous and z-ascending.

Unreliable labels: a gated patient with an ROI whose lesion the labels may miss (an
unknown or missing artery name, an outline lost, 0 pixels, self-check failures against
the XML's own Area/Mean/Max other than a lone one; `calcium_xml`) gets
``labels_unreliable`` (the per-ROI reasons, naming the ROI) in its manifest entry and in
``report.json``. A lone ROI outside the self-check's bounds in a patient whose other ROIs
agree is listed as ``rois_flagged`` instead; the patient stays in its split. With
``unreliable_labels="exclude"`` (the default) a patient with unreliable labels is kept
out of train/val/test, so no probe, U-Net or evaluation is judged against labels known to
disagree with their own annotation; its scan, with those labels (used only for
DINO-LG's guided crops), stays in pretrain. ``"keep"`` leaves it in the splits, flagged.

Untrustworthy HU: a study with slices whose rescale differs from the rest of its series,
or whose HU are constant (`dicom`, ``hu_suspect``), gets ``hu_unreliable`` (file and
reason per slice) in its manifest entry and in ``report.json`` and is kept out of every
split, pretrain included (its ``split`` is ``"excluded"``); a RescaleSlope of 0 refuses the
study (``skipped_patients``, the file named).

The manifest is written last, only by a conversion that finished (`dataset_writer`):
an interrupted one (Ctrl-C, SIGTERM, a crash) leaves no index and the folder does not
look complete. The release is read (patients, score sheet) before anything is created in
the output folder, so a wrong ``release`` leaves it as it was. A full disk stops the
conversion with one `ConvertError` naming the folder, the space needed and the space free.
The same inputs and seed give an identical manifest and byte-identical shards for any
worker count; a second conversion into the same folder fails at once with
`FolderBusyError`. A val or test split left empty (too few labelled patients) is warned
about in the log and in ``report.json``'s ``warnings``.
"""

from __future__ import annotations

import hashlib
import numbers
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from dinolg_jax.data import (
    coca,
    convert_report,
    dataset_writer,
    dicom,
    manifest,
    records,
    stratified_split,
)
from dinolg_jax.data.dataset_writer import ConvertError, FolderBusyError
from dinolg_jax.scoring import agatston

__all__ = [
    "ConvertError",
    "FolderBusyError",
    "assign_splits",
    "convert_release",
    "lesion_centers",
    "prepare_study",
    "slice_records",
]

CACHE_VERSION = 3
SPLITS = manifest.SPLITS
CATEGORIES = convert_report.CATEGORIES
WRITER_OPTIONS = dataset_writer.WRITER_OPTIONS  # the shards' ArrayRecord options
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def lesion_centers(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids of each vessel's 4-connected components on one slice.

    Args:
      labels: uint8 [H, W], 0 background, 1..4 vessels.

    Returns:
      centers float32 [K, 2] (row, col) in pixels and vessels uint8 [K], ordered by
      vessel, then by the components' raster order.
    """
    centers, vessels = [], []
    for v in np.unique(labels[labels > 0]):
        comp, n = ndimage.label(labels == v, structure=_FOUR_CONNECTED)
        if n:
            centers.extend(ndimage.center_of_mass(comp > 0, comp, range(1, n + 1)))
            vessels.extend([int(v)] * n)
    return (
        np.asarray(centers, np.float32).reshape(-1, 2),
        np.asarray(vessels, np.uint8),
    )


def slice_records(study: coca.Study) -> Iterator[dict[str, Any]]:
    """The study's slice records (`records` schema), z ascending; no labels -> zeros."""
    nz = study.hu.shape[0]
    zeros = np.zeros(study.hu.shape[1:], np.uint8)
    for z in range(nz):
        lab = zeros if study.labels is None else study.labels[z]
        centers, vessels = lesion_centers(lab)
        yield {
            "image": study.hu[z],
            "labels": lab,
            "study": study.study_id,
            "slice": z,
            "num_slices": nz,
            "z_mm": float(study.z_mm[z]),
            "pixel_mm": np.asarray(study.pixel_mm, np.float32),
            "slice_thickness_mm": float(study.slice_thickness_mm),
            "lesion_centers": centers,
            "lesion_vessels": vessels,
            "has_calcium": bool(lab.any()),
            "kind": study.kind,
            "kvp": 0.0 if study.kvp is None else float(study.kvp),
            "position_mm": study.geometry.positions_mm[z],
            "orientation": np.asarray(study.geometry.orientation, np.float64),
            "lossy_compression": bool(study.lossy_compression),
        }


def _study_inputs(release: Path, kind: str, ident: str) -> list[Path]:
    if kind == "gated":
        return coca.gated_inputs(release, int(ident))
    return sorted(p for p in (release / coca.NONGATED_DIR / ident).rglob("*") if p.is_file())


def _fingerprint(release: Path, files: list[Path]) -> str:
    h = hashlib.sha256(f"cache v{CACHE_VERSION} records v{records.VERSION}".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(release)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _study_id(kind: str, ident: str) -> str:
    return coca.gated_study_id(int(ident)) if kind == "gated" else coca.nongated_study_id(ident)


def prepare_study(release: str | Path, kind: str, ident: str, cache_dir: str | Path) -> dict:
    """Phase 1 for one study: load, score, encode to ``cache_dir/<study>.records``.

    Returns a JSON-able summary (counts, Agatston, report, timing); a study that
    cannot be read gets ``"error"`` instead and no cache file.
    """
    release, cache_dir = Path(release), Path(cache_dir)
    sid = _study_id(kind, ident)
    fingerprint = _fingerprint(release, _study_inputs(release, kind, ident))
    cached = dataset_writer.cached_summary(cache_dir, sid, fingerprint)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"study_id": sid, "kind": kind, "fingerprint": fingerprint}
    try:
        if kind == "gated":
            study = coca.load_gated_study(release, int(ident))
        else:
            study = coca.load_nongated_study(release, ident)
    except (dicom.DicomError, coca.CocaError) as e:
        summary["error"] = coca.strip_root(f"{type(e).__name__}: {e}", release)
        return summary
    blobs, calcified = dataset_writer.encode_records(slice_records(study))
    summary.update(
        num_slices=int(study.hu.shape[0]),
        calcified_slices=int(calcified),
        labels_valid=study.labels is not None,
        labels_unreliable=[_roi_line(u) for u in study.report.unreliable]
        if study.labels is not None
        else [],
        rois_flagged=[_roi_line(u) for u in study.report.flagged]
        if study.labels is not None
        else [],
        hu_unreliable=[f"{p}: {why}" for p, why in study.report.hu_suspect],
        kvp=study.kvp,
        lossy_compression=bool(study.lossy_compression),
        report=asdict(study.report),
        agatston=None,
    )
    if kind == "gated" and study.labels is not None:
        score = agatston.agatston(study.hu, study.labels, study.pixel_mm, study.slice_thickness_mm)
        summary["agatston"] = {
            **{v: float(score.per_vessel[v]) for v in coca.VESSELS},
            "total": float(score.total),
        }
    summary["load_s"] = time.perf_counter() - t0
    dataset_writer.save_study(cache_dir, summary, blobs)
    return summary


def _roi_line(u: Any) -> str:
    """One unreliable or flagged ROI as a manifest line (image, ROI, name, reason)."""
    name = f" ({u.name!r})" if u.name else ""
    return f"ImageIndex {u.image_index} ROI {u.roi}{name}: {u.reason}"


def _prepare_task(args: tuple[str, str, str, str]) -> dict:
    return prepare_study(*args)


def assign_splits(categories: dict[str, str], seed: int) -> dict[str, str]:
    """Stratified patient split: study id -> "train" | "val" | "test".

    `stratified_split.assign` with the paper4 risk categories as strata, lowest first:
    within each, the patients (sorted) are permuted by a generator seeded with `seed`;
    ``round(10 %)`` go to val and to test, at least one each when the category has 3 or
    more patients; the rest to train.

    Raises:
      ConvertError: a category that is not one of the paper's four.
    """
    unknown = set(categories.values()) - set(CATEGORIES)
    if unknown:
        raise ConvertError(f"unknown risk categories {sorted(unknown)}")
    return stratified_split.assign(categories, seed, CATEGORIES)


def _sort_key(summary: dict) -> tuple:
    ident = summary["study_id"].split("-", 1)[1]
    return (summary["kind"] != "gated", int(ident))


def _assign(
    summaries: list[dict], scores: dict[str, dict], seed: int, unreliable_labels: str = "exclude"
) -> tuple[list[dict], dict[str, str], dict[str, list[dict]]]:
    """Scores and categories per study, the patient split, and each split's studies."""
    ok = sorted((s for s in summaries if "error" not in s), key=_sort_key)
    by_folder = {coca.nongated_folder_id(k): k for k in scores}
    for s in ok:
        if s["kind"] == "nongated":
            key = by_folder.get(s["study_id"].split("-", 1)[1])
            if key is not None:
                s["agatston"] = {k: scores[key][k] for k in (*coca.VESSELS, "total")}
        s["category"] = (
            None
            if s["agatston"] is None
            else agatston.risk_category(s["agatston"]["total"], scheme="paper4")
        )
    excluded = unreliable_labels == "exclude"
    labelled = {
        s["study_id"]: s["category"]
        for s in ok
        if s["kind"] == "gated"
        and s["labels_valid"]
        and not (excluded and s.get("labels_unreliable"))
        and not s.get("hu_unreliable")
    }
    split_of = assign_splits(labelled, seed)
    for s in ok:
        if s.get("hu_unreliable"):  # HU that cannot be right: no split at all
            split_of[s["study_id"]] = stratified_split.EXCLUDED
    return ok, split_of, stratified_split.members(ok, split_of)


def convert_release(
    release: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    workers: int = 1,
    shards_per_split: int = 4,
    keep_cache: bool = False,
    progress: bool = True,
    unreliable_labels: str = "exclude",
) -> dict[str, Any]:
    """Converts `release` into shards + manifest.json + report.json under `out`.

    Args:
      release: COCA release root (or a phantom written in its format).
      out: output folder (created; re-running into it is safe).
      seed: split seed.
      workers: processes loading studies (1 = in this process); output is identical.
      shards_per_split: shards per split (fewer when a split has fewer records).
      keep_cache: keep ``out/cache`` (per-study records) for a faster re-run.
      progress: show tqdm progress bars.
      unreliable_labels: ``"exclude"`` patients with unreliable labels from
        train/val/test, or ``"keep"`` them there (flagged either way; module docstring).

    Returns:
      The report (also written to ``out/report.json``).

    Raises:
      FolderBusyError: another conversion is writing into `out` (nothing was touched).
      coca.CocaError: not a release, or an unreadable ``scores.xlsx`` (before anything is
        created in `out`).
      ValueError: `seed`, `workers` or `shards_per_split` out of range (likewise).
      ConvertError: the disk filled up (the message names the folder and the space).
    """
    if unreliable_labels not in ("exclude", "keep"):
        raise ValueError(f"unreliable_labels: 'exclude' or 'keep', not {unreliable_labels!r}")
    for name, value, low in (
        ("seed", seed, 0),
        ("workers", workers, 1),
        ("shards_per_split", shards_per_split, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, not {value!r}")
    release, out = Path(release), Path(out)
    gated, nongated, scores = _read_release(release)  # a wrong release leaves `out` as it was
    tasks = [(str(release), "gated", str(p), str(out / "cache")) for p in gated.with_dicom]
    tasks += [(str(release), "nongated", n, str(out / "cache")) for n in nongated]

    def need_bytes() -> float:  # records ~1.5x the int16 pixels, in the cache and 2 shards
        return 4.5 * sum(
            f.stat().st_size
            for _, kind, ident, _ in tasks
            for f in _study_inputs(release, kind, ident)
        )

    with dataset_writer.DatasetWriter(
        out,
        workers=workers,
        shards_per_split=shards_per_split,
        keep_cache=keep_cache,
        progress=progress,
    ) as writer:
        summaries = writer.prepare(_prepare_task, tasks, need_bytes)
        ok, split_of, members = _assign(summaries, scores, seed, unreliable_labels)
        splits, starts = writer.write_splits(members, "calcified_slices")
        studies = _study_entries(ok, split_of, starts)
        report = convert_report.build_report(gated, summaries, scores, splits, studies, len(tasks))
        index = {
            "record_version": records.VERSION,
            "seed": int(seed),
            "unreliable_labels": unreliable_labels,
            "splits": splits,
            "studies": studies,
        }
        return writer.finish(report, index, sum(s["num_slices"] for s in ok))


def _study_entries(
    ok: list[dict], split_of: dict[str, str], starts: dict[str, dict[str, int]]
) -> dict[str, dict]:
    """The manifest's ``studies``: each converted study's kind, split, record indices,
    scores and flags."""
    studies = {}
    for s in ok:
        sid = s["study_id"]
        studies[sid] = {
            "kind": s["kind"],
            "split": split_of.get(sid, "pretrain"),
            "num_slices": s["num_slices"],
            "records": {k: starts[k][sid] for k in SPLITS if sid in starts[k]},
            "agatston": s["agatston"],
            "category": s["category"],
            "calcified_slices": s["calcified_slices"],
            "lossy_compression": bool(s.get("lossy_compression", False)),
        }
        for key in ("labels_unreliable", "rois_flagged", "hu_unreliable"):
            if s.get(key):
                studies[sid][key] = s[key]
    return studies


def _read_release(release: Path) -> tuple[coca.GatedPatients, list[str], dict[str, dict]]:
    """The release's gated patients, non-gated studies and score sheet (nothing written)."""
    gated = coca.list_gated_patients(release)
    nongated = coca.list_nongated_studies(release)
    scores_path = release / coca.NONGATED_DIR / "scores.xlsx"
    scores = coca.load_nongated_scores(release) if scores_path.is_file() else {}
    return gated, nongated, scores
