"""Converts any CT collection (DICOM series or NIfTI volumes, masks optional) into a dataset.

The output is the dataset `data.convert` makes of the COCA release, written by the same
engine (`data.dataset_writer`): one ArrayRecord record per slice (`records` schema),
shards per split with their counts and SHA-256 in ``manifest.json``, ``report.json``, the
folder lock, a per-study cache that makes a re-run resume, worker processes with output
independent of their count, the old index removed when a conversion starts and the
manifest written last (an interrupted run leaves none), a full disk as one
`dataset_writer.ConvertError` naming the folder and the space. The studies come from
`data.folder_source` (what is a study, how masks match, de-identified ids); what is this
module's is reading and labelling them, their split and their manifest entries.

Records: ``image`` the study's HU; ``labels`` the study's mask (any labels 1 .. 255; all
zero without a mask); ``has_calcium`` true where the slice has any labelled voxel (the
field keeps its name: it means "any label" here); ``lesion_centers`` one point per
4-connected component of each label on the slice: its centroid, or, when the centroid
falls outside the component (a crescent, a ring), the component's voxel nearest to it
(`mask_centers`), so DINO-LG's guided crops (`data.multicrop`) centre on the structure
itself; ``lesion_vessels`` the component's label; ``kind`` "dicom" or "nifti".

Splits. Without masks every study is in ``pretrain`` and train / val / test are empty.
With masks, by the rule `convert` uses for the labelled gated patients
(`data.stratified_split`): the studies whose mask was used are split by study,
~80/10/10 % into train / val / test, stratified (instead of by Agatston risk category)
by whether the mask has any label ("empty" drawn first, then "labelled"), deterministic
from the seed; ``pretrain`` holds every study except the val and test ones (studies
whose mask is missing or refused are in pretrain only, with zero labels).

Every file and folder a run skips is in ``report.json`` with its reason: studies that
cannot be read (``skipped_studies``), files left out by name or by the DICOM reader
(``skipped_files``), masks matching no study (``unmatched_masks``) and masks not used
(``labels_left_out``). Paths there are relative to the images (or masks) root; the
manifest and records hold only the de-identified study ids (``sources`` in the report
maps them back, for the data's owner).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from dinolg_jax.data import (
    convert,
    dataset_writer,
    dicom,
    folder_source,
    manifest,
    nifti_reader,
    records,
    stratified_split,
)
from dinolg_jax.data.volume import CTVolume

CACHE_VERSION = 1
SPLITS = manifest.SPLITS
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)

__all__ = ["FolderConvertError", "convert_folder", "format_summary", "mask_centers"]


class FolderConvertError(RuntimeError):
    """A folder conversion that cannot start (no studies, or the output inside the input)."""


def mask_centers(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One point inside each labelled 4-connected component of a slice.

    Args:
      labels: uint8 [H, W], 0 background.

    Returns:
      centers float32 [K, 2] (row, col) pixels and their labels uint8 [K], ordered by
      label, then by the components' raster order. Each point is the component's
      centroid when the pixel nearest to it belongs to the component, else the
      component's pixel nearest to the centroid (the first in raster order on ties).
    """
    centers, values = [], []
    for v in np.unique(labels[labels > 0]):
        comp, n = ndimage.label(labels == v, structure=_FOUR_CONNECTED)
        if not n:
            continue
        cents = ndimage.center_of_mass(comp > 0, comp, range(1, n + 1))
        for i, (r, c) in enumerate(cents, start=1):
            ri, ci = round(r), round(c)
            if comp[ri, ci] != i:
                rows, cols = np.nonzero(comp == i)
                j = int(np.argmin((rows - r) ** 2 + (cols - c) ** 2))
                r, c = float(rows[j]), float(cols[j])
            centers.append((r, c))
            values.append(int(v))
    return np.asarray(centers, np.float32).reshape(-1, 2), np.asarray(values, np.uint8)


def slice_records(volume: CTVolume) -> Iterator[dict[str, Any]]:
    """`convert.slice_records` with the guided-crop points of `mask_centers`."""
    for rec in convert.slice_records(volume):
        rec["lesion_centers"], rec["lesion_vessels"] = mask_centers(rec["labels"])
        yield rec


def _fingerprint(images: Path, masks: Path | None, study: folder_source.FolderStudy) -> str:
    head = f"folder cache v{CACHE_VERSION} records v{records.VERSION} masks {masks is not None}"
    h = hashlib.sha256(head.encode())
    inputs = [(images, f) for f in study.files]
    if masks is not None and study.mask is not None:
        inputs.append((masks, study.mask))
    for root, rel in inputs:
        st = (root / rel).stat()
        h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def prepare_study(
    images: str | Path,
    masks: str | Path | None,
    study: folder_source.FolderStudy,
    cache_dir: str | Path,
) -> dict[str, Any]:
    """Phase 1 for one study: read it (and its mask), encode to ``cache_dir/<id>.records``.

    Returns:
      A JSON-able summary (counts, the load report, timing), reused while the input
      files' names, sizes and mtimes are unchanged; an unreadable study gets ``"error"``
      (the reason, paths relative to the images root) and no cache file.
    """
    images, cache_dir = Path(images), Path(cache_dir)
    masks = None if masks is None else Path(masks)
    sid = study.study_id
    summary: dict[str, Any] = {"study_id": sid, "kind": study.kind, "source": study.rel}
    try:
        fingerprint = _fingerprint(images, masks, study)
    except OSError as e:  # a file vanished since it was listed
        summary["error"] = folder_source.strip_root(f"{type(e).__name__}: {e}", images)
        return summary
    cached = dataset_writer.cached_summary(cache_dir, sid, fingerprint)
    if cached is not None:
        return cached
    summary["fingerprint"] = fingerprint
    t0 = time.perf_counter()
    try:
        volume, report = folder_source.load_study(study, images, masks)
    except (dicom.DicomError, nifti_reader.NiftiReadError) as e:
        summary["error"] = folder_source.strip_root(f"{type(e).__name__}: {e}", images)
        return summary
    blobs, labelled = dataset_writer.encode_records(slice_records(volume))
    summary.update(
        num_slices=int(volume.hu.shape[0]),
        shape=[int(n) for n in volume.hu.shape],
        pixel_mm=[float(v) for v in volume.pixel_mm],
        slice_thickness_mm=float(volume.slice_thickness_mm),
        labelled_slices=int(labelled),
        labels_valid=volume.labels is not None,
        lossy_compression=bool(volume.lossy_compression),
        report=dataclasses.asdict(report),
        load_s=time.perf_counter() - t0,
    )
    dataset_writer.save_study(cache_dir, summary, blobs)
    return summary


def _prepare_task(args: tuple) -> dict[str, Any]:
    return prepare_study(*args)


def _members(
    ok: list[dict], with_masks: bool, seed: int
) -> tuple[dict[str, str], dict[str, list[dict]]]:
    """The supervised split of each labelled study and each split's studies (in order):
    `stratified_split` with the strata "empty" then "labelled" (alphabetical)."""
    strata = {
        s["study_id"]: "labelled" if s["labelled_slices"] else "empty"
        for s in ok
        if with_masks and s["labels_valid"]
    }
    split_of = stratified_split.assign(strata, seed, sorted(set(strata.values())))
    return split_of, stratified_split.members(ok, split_of)


def convert_folder(
    images: str | Path,
    out: str | Path,
    *,
    masks: str | Path | None = None,
    seed: int = 0,
    workers: int = 1,
    shards_per_split: int = 4,
    keep_cache: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Converts the studies under `images` (masks under `masks`) into a dataset at `out`.

    Args:
      images: root of the DICOM series folders and / or NIfTI files (HU).
      out: output folder (created; re-running into it resumes and is safe).
      masks: root of the NIfTI label masks, or None (every study in pretrain).
      seed: split seed.
      workers: processes reading studies (1 = this process); the output is identical.
      shards_per_split: shards per split (fewer when a split has fewer records).
      keep_cache: keep ``out/cache`` for a faster re-run.
      progress: tqdm progress bars.

    Returns:
      The report (also ``out/report.json``).

    Raises:
      FileNotFoundError: `images` or `masks` is not a folder (nothing written).
      FolderConvertError: no study under `images`, or `out` inside `images` or `masks`
        (nothing written).
      ValueError: `workers` or `shards_per_split` below 1.
      dataset_writer.FolderBusyError: another conversion is writing into `out`.
      dataset_writer.ConvertError: the disk filled up (the message names the folder and
        the space).
    """
    if int(workers) < 1 or int(shards_per_split) < 1:
        raise ValueError(
            f"workers and shards_per_split must be >= 1, got {workers}, {shards_per_split}"
        )
    images, out = Path(images), Path(out)
    masks = None if masks is None else Path(masks)
    for root in (images, masks):
        if root is not None and out.resolve().is_relative_to(root.resolve()):
            raise FolderConvertError(f"the output folder {out} lies inside the input {root}")
    found = folder_source.list_studies(images, masks)
    if not found.studies:
        raise FolderConvertError(
            f"{images}: no DICOM series folder or .nii / .nii.gz file found "
            f"({len(found.ignored_files)} file(s) ignored by name)"
        )
    root_masks = None if masks is None else str(masks)
    tasks = [(str(images), root_masks, st, str(out / "cache")) for st in found.studies]

    def need_bytes() -> float:  # records ~1.5x the int16 voxels, in the cache and 2 shards
        total = 0
        for st in found.studies:
            total += sum((images / f).stat().st_size for f in st.files)
            if masks is not None and st.mask is not None:
                total += (masks / st.mask).stat().st_size
        return 4.5 * total

    with dataset_writer.DatasetWriter(
        out,
        workers=int(workers),
        shards_per_split=int(shards_per_split),
        keep_cache=keep_cache,
        progress=progress,
    ) as writer:
        summaries = writer.prepare(_prepare_task, tasks, need_bytes)
        ok = [s for s in summaries if "error" not in s]  # listed in rel-path order
        split_of, members = _members(ok, masks is not None, seed)
        splits, starts = writer.write_splits(members, "labelled_slices")
        studies = {
            s["study_id"]: {
                "kind": s["kind"],
                "split": split_of.get(s["study_id"], "pretrain"),
                "num_slices": s["num_slices"],
                "records": {
                    k: starts[k][s["study_id"]] for k in SPLITS if s["study_id"] in starts[k]
                },
                "agatston": None,
                "category": None,
                "calcified_slices": s["labelled_slices"],
                "labelled_slices": s["labelled_slices"],
                "labels_valid": s["labels_valid"],
                "lossy_compression": s["lossy_compression"],
            }
            for s in ok
        }
        index = {
            "record_version": records.VERSION,
            "seed": int(seed),
            "source": "folder",
            "masks": masks is not None,
            "splits": splits,
            "studies": studies,
        }
        report = build_report(found, summaries, splits, masks is not None)
        return writer.finish(report, index, sum(s["num_slices"] for s in ok))


def build_report(
    found: folder_source.StudyList,
    summaries: list[dict],
    splits: dict[str, dict],
    with_masks: bool,
) -> dict[str, Any]:
    """report.json: every skip with its reason, what loading changed, counts, splits."""
    ok = [s for s in summaries if "error" not in s]
    files = [{"path": p, "reason": r} for p, r in found.ignored_files]
    files += [
        {"study": s["study_id"], "path": p, "reason": r}
        for s in ok
        for p, r in s["report"]["dropped_files"]
    ]
    left_out = [
        {"study": s["study_id"], "reason": s["report"]["labels_left_out"]}
        for s in ok
        if with_masks and not s["labels_valid"]
    ]
    warnings = []
    if with_masks:
        warnings += [
            f"split {k!r} is empty: val and test take 10 % (at least one) of each group of 3 or "
            "more studies with a usable mask (with labels / without)"
            for k in ("val", "test")
            if splits[k]["num_records"] == 0
        ]
        if left_out:
            warnings.append(f"{len(left_out)} study(ies) without a usable mask (labels_left_out)")
    labels: dict[str, int] = {}
    for s in ok:
        for v, n in s["report"]["label_voxels"].items():
            labels[v] = labels.get(v, 0) + n
    return {
        "warnings": warnings,
        "counts": {
            "studies_found": len(summaries),
            "dicom_series": sum(s["kind"] == "dicom" for s in summaries),
            "nifti_files": sum(s["kind"] == "nifti" for s in summaries),
            "studies_converted": len(ok),
            "studies_failed": len(summaries) - len(ok),
            "files_skipped": len(files),
            "masks_used": sum(bool(s["labels_valid"]) for s in ok),
            "labels_left_out": len(left_out),
            "unmatched_masks": len(found.unmatched_masks),
            "studies_reoriented": sum(bool(s["report"]["reoriented"]) for s in ok),
            "studies_lossy_compression": sum(bool(s["lossy_compression"]) for s in ok),
            "studies_rounded_hu": sum(s["report"]["rounded_voxels"] > 0 for s in ok),
        },
        "splits": {
            k: {
                "studies": v["num_studies"],
                "slices": v["num_records"],
                "labelled_slices": v["num_positive"],
            }
            for k, v in splits.items()
        },
        "label_voxels": dict(sorted(labels.items(), key=lambda kv: int(kv[0]))),
        "skipped_studies": [
            {"study": s["study_id"], "path": s["source"], "reason": s["error"]}
            for s in summaries
            if "error" in s
        ],
        "skipped_files": files,
        "unmatched_masks": found.unmatched_masks,
        "labels_left_out": left_out,
        "reoriented": {
            s["study_id"]: s["report"]["reoriented"] for s in ok if s["report"]["reoriented"]
        },
        "z_gaps_mm": {
            s["study_id"]: s["report"]["z_gaps_mm"] for s in ok if s["report"]["z_gaps_mm"]
        },
        "lossy_compression": {
            s["study_id"]: s["report"]["lossy_files"] for s in ok if s["report"]["lossy_files"]
        },
        "rounded_hu_voxels": {
            s["study_id"]: s["report"]["rounded_voxels"]
            for s in ok
            if s["report"]["rounded_voxels"]
        },
        "sources": {s["study_id"]: s["source"] for s in summaries},
    }


def format_summary(report: dict[str, Any]) -> str:
    """The split table, the counts and the skips of a `convert_folder` report."""
    head = f"{'split':<9}{'studies':>8}{'slices':>8}{'labelled':>9}"
    lines = [head, "-" * len(head)]
    for split, row in report["splits"].items():
        lines.append(f"{split:<9}{row['studies']:>8}{row['slices']:>8}{row['labelled_slices']:>9}")
    c = report["counts"]
    lines += [
        "",
        f"studies: {c['studies_found']} found ({c['dicom_series']} DICOM series, "
        f"{c['nifti_files']} NIfTI), {c['studies_converted']} converted, "
        f"{c['studies_failed']} skipped; files skipped: {c['files_skipped']}",
        f"masks: {c['masks_used']} used, {c['labels_left_out']} left out, "
        f"{c['unmatched_masks']} matching no study; reoriented: {c['studies_reoriented']}; "
        f"lossy: {c['studies_lossy_compression']}; HU rounded: {c['studies_rounded_hu']}",
    ]
    lines += [f"skipped {s['path']}: {s['reason']}" for s in report["skipped_studies"]]
    return "\n".join(lines + dataset_writer.format_tail(report))
