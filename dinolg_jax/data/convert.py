"""Converts a COCA release (or the phantom) into ArrayRecord shards, manifest.json, report.json.

Two phases:

1. Per study, in parallel worker processes: load it (`coca`), score its labels
   (`scoring.agatston`, default convention: 130 HU, 4-connectivity, 1 mm^2), encode
   one record per slice (`records`) and write them to a per-study cache file under
   ``<out>/cache/``. A cache entry whose input fingerprint (file names, sizes,
   mtimes, code version) matches is reused, so an interrupted run resumes.
2. In the main process: assign splits, then stream the cached records into the
   shards of each split and write ``manifest.json`` (`manifest`) and ``report.json``.

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

The manifest is written last, only by a conversion that finished: ``manifest.json`` and
``report.json`` are removed when a conversion starts, so an interrupted one (Ctrl-C,
SIGTERM, a crash) leaves no index and the folder does not look complete. The release is
read (patients, score sheet) before anything is created in the output folder, so a wrong
``release`` leaves it as it was. A full disk stops the conversion with one
`ConvertError` naming the folder, the space needed and the space free; temporary files
are removed.

Every file is written atomically (a temp name unique to the writing process, then
``os.replace``); the same inputs and seed give an identical manifest and byte-identical
shards for any worker count. A conversion holds ``<out>/.lock`` (`runtime.folder_lock`)
from start to end: a second conversion into the same folder fails at once with
`FolderBusyError` instead of mixing its shards with the first one's. The manifest records
each shard's record count, size and SHA-256 (`shards.describe`). A val or test split
left empty (too few labelled patients) is warned about in the log and in
``report.json``'s ``warnings``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import multiprocessing
import numbers
import os
import shutil
import signal
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from scipy import ndimage
from tqdm import tqdm

from dinolg_jax.data import coca, convert_report, dicom, manifest, records, shards
from dinolg_jax.runtime.folder_lock import FolderBusyError, FolderLock
from dinolg_jax.scoring import agatston

__all__ = ["ConvertError", "FolderBusyError", "convert_release", "prepare_study", "write_shard"]

CACHE_VERSION = 3
SPLITS = manifest.SPLITS
CATEGORIES = convert_report.CATEGORIES
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
# One record per chunk (O(1) random access), stored uncompressed: reading is the
# pretraining pipeline's hot path (docs/measurements.md#record-codec); disk costs 2x.
WRITER_OPTIONS = "group_size:1,uncompressed"
_LEN = struct.Struct("<I")
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


class ConvertError(RuntimeError):
    """A conversion that cannot produce a consistent output."""


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


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _study_id(kind: str, ident: str) -> str:
    return coca.gated_study_id(int(ident)) if kind == "gated" else coca.nongated_study_id(ident)


def prepare_study(release: str | Path, kind: str, ident: str, cache_dir: str | Path) -> dict:
    """Phase 1 for one study: load, score, encode to ``cache_dir/<study>.records``.

    Returns a JSON-able summary (counts, Agatston, report, timing); a study that
    cannot be read gets ``"error"`` instead and no cache file.
    """
    release, cache_dir = Path(release), Path(cache_dir)
    sid = _study_id(kind, ident)
    meta_path, rec_path = cache_dir / f"{sid}.json", cache_dir / f"{sid}.records"
    fingerprint = _fingerprint(release, _study_inputs(release, kind, ident))
    if meta_path.is_file() and rec_path.is_file():
        cached = json.loads(meta_path.read_text())
        if cached.get("fingerprint") == fingerprint:
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
    chunks, calcified = [], 0
    for rec in slice_records(study):
        blob = records.encode(rec)
        chunks += [_LEN.pack(len(blob)), blob]
        calcified += rec["has_calcium"]
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
    _atomic_write(rec_path, b"".join(chunks))
    _atomic_write(meta_path, json.dumps(summary, sort_keys=True).encode())
    return summary


def _roi_line(u: Any) -> str:
    """One unreliable or flagged ROI as a manifest line (image, ROI, name, reason)."""
    name = f" ({u.name!r})" if u.name else ""
    return f"ImageIndex {u.image_index} ROI {u.roi}{name}: {u.reason}"


def _prepare_task(args: tuple[str, str, str, str]) -> dict:
    return prepare_study(*args)


def _read_cached(path: Path, skip: int, count: int) -> Iterator[bytes]:
    """Records `skip` .. `skip + count` of a per-study cache file."""
    with path.open("rb") as f:
        for i in range(skip + count):
            head = f.read(_LEN.size)
            if len(head) != _LEN.size:
                raise ConvertError(
                    f"cache file {path.name} holds fewer than {skip + count} records"
                )
            (n,) = _LEN.unpack(head)
            if i < skip:
                f.seek(n, os.SEEK_CUR)
                continue
            blob = f.read(n)
            if len(blob) != n:
                raise ConvertError(f"cache file {path.name} is truncated")
            yield blob


def write_shard(path: str | Path, segments: list[tuple[str, int, int]]) -> dict[str, Any]:
    """Writes one ArrayRecord shard (temp name, then rename) from cache segments.

    Args:
      path: final shard path.
      segments: (cache file, first record, number of records), in shard order.

    Returns:
      The shard's manifest fields (`shards.describe`): ``num_records`` (read back from
      the finished file's footer and checked against the number written), ``bytes``,
      ``sha256``.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    writer = ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
    n = 0
    try:
        try:
            for cache, skip, count in segments:
                for blob in _read_cached(Path(cache), skip, count):
                    writer.write(blob)
                    n += 1
        finally:
            writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    info = shards.describe(tmp)
    if info["num_records"] != n:
        Path(tmp).unlink(missing_ok=True)
        raise ConvertError(f"{path.name}: wrote {n} records, the file holds {info['num_records']}")
    os.replace(tmp, path)
    return info


def _write_shard_task(args: tuple[str, list[tuple[str, int, int]]]) -> dict[str, Any]:
    return write_shard(*args)


def _shard_bytes(tasks: list[tuple[str, list[tuple[str, int, int]]]]) -> float:
    """Bytes the shards of `tasks` need, from their cache segments (records pro rata)."""
    total = 0.0
    for _, segments in tasks:
        for cache, _, count in segments:
            path = Path(cache)
            meta = path.with_suffix(".json")
            n = json.loads(meta.read_text())["num_slices"] if meta.is_file() else count
            total += path.stat().st_size * count / max(n, 1) if path.is_file() else 0
    return total


def assign_splits(categories: dict[str, str], seed: int) -> dict[str, str]:
    """Stratified patient split: study id -> "train" | "val" | "test".

    Within each paper4 category, the patients (sorted) are permuted by a generator
    seeded with `seed`; ``round(10 %)`` go to val and to test, at least one each when
    the category has 3 or more patients; the rest to train.
    """
    rng = np.random.default_rng(seed)
    unknown = set(categories.values()) - set(CATEGORIES)
    if unknown:
        raise ConvertError(f"unknown risk categories {sorted(unknown)}")
    out = {}
    for cat in CATEGORIES:
        ids = sorted(s for s, c in categories.items() if c == cat)
        n = len(ids)
        order = [ids[i] for i in rng.permutation(n)]
        n_val = max(1, math.floor(VAL_FRACTION * n + 0.5)) if n >= 3 else 0
        n_test = max(1, math.floor(TEST_FRACTION * n + 0.5)) if n >= 3 else 0
        for i, sid in enumerate(order):
            out[sid] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return out


def _sort_key(summary: dict) -> tuple:
    ident = summary["study_id"].split("-", 1)[1]
    return (summary["kind"] != "gated", int(ident))


def _plan_split(
    out: Path, split: str, studies: list[dict], cache_dir: Path, shards: int
) -> tuple[list[tuple[str, list[tuple[str, int, int]]]], dict[str, int]]:
    """Shard tasks (path, cache segments) of one split and each study's first index."""
    total = sum(s["num_slices"] for s in studies)
    if total == 0:  # an empty split (e.g. a tiny release without val/test patients)
        return [], {}
    k = min(shards, total)
    bounds = [total * i // k for i in range(k + 1)]
    starts, index = {}, 0
    for s in studies:
        starts[s["study_id"]] = index
        index += s["num_slices"]
    plan = []
    for i in range(k):
        lo, hi = bounds[i], bounds[i + 1]
        segments = []
        for s in studies:
            a = max(lo, starts[s["study_id"]])
            b = min(hi, starts[s["study_id"]] + s["num_slices"])
            if a < b:
                cache = str(cache_dir / f"{s['study_id']}.records")
                segments.append((cache, a - starts[s["study_id"]], b - a))
        plan.append((str(out / f"{split}-{i:05d}-of-{k:05d}.array_record"), segments))
    return plan, starts


def _run(fn: Any, tasks: list, pool: Any, desc: str, progress: bool) -> list:
    """Applies `fn` to `tasks` in order, in `pool` when given, with a progress bar."""
    results = []
    with tqdm(total=len(tasks), desc=desc, disable=not progress) as bar:
        stream = pool.imap(fn, tasks, chunksize=1) if pool is not None else map(fn, tasks)
        for r in stream:
            results.append(r)
            bar.update(1)
    return results


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
    members: dict[str, list[dict]] = {k: [] for k in SPLITS}
    for s in ok:
        if s.get("hu_unreliable"):  # HU that cannot be right: no split at all
            split_of[s["study_id"]] = "excluded"
            continue
        sup = split_of.get(s["study_id"])
        if sup is not None:
            members[sup].append(s)
        if sup not in ("val", "test"):
            members["pretrain"].append(s)
    return ok, split_of, members


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
    inputs = _read_release(release)  # before the lock: a wrong release leaves `out` as it was
    with FolderLock(out, "conversion"):
        return _convert_locked(
            release,
            out,
            inputs,
            seed=seed,
            workers=workers,
            shards_per_split=shards_per_split,
            keep_cache=keep_cache,
            progress=progress,
            unreliable_labels=unreliable_labels,
        )


def _read_release(release: Path) -> tuple[coca.GatedPatients, list[str], dict[str, dict]]:
    """The release's gated patients, non-gated studies and score sheet (nothing written)."""
    gated = coca.list_gated_patients(release)
    nongated = coca.list_nongated_studies(release)
    scores_path = release / coca.NONGATED_DIR / "scores.xlsx"
    scores = coca.load_nongated_scores(release) if scores_path.is_file() else {}
    return gated, nongated, scores


def _no_space(err: BaseException) -> bool:
    """Whether `err` (or what it wraps) is a full disk."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _disk_full(out: Path, what: str, need_bytes: float) -> ConvertError:
    free = shutil.disk_usage(out).free if out.exists() else 0
    return ConvertError(
        f"{out}: disk full while writing {what}: the conversion needs about "
        f"{need_bytes / 1e6:,.0f} MB more there, {free / 1e6:,.0f} MB are free; free some "
        "space (or choose another --out) and re-run: no manifest was written, finished "
        "studies are reused"
    )


def _ignore_sigint() -> None:
    """Worker initialiser: Ctrl-C is the main process's to handle (one message, no
    traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _convert_locked(
    release: Path,
    out: Path,
    inputs: tuple[coca.GatedPatients, list[str], dict[str, dict]],
    *,
    seed: int,
    workers: int,
    shards_per_split: int,
    keep_cache: bool,
    progress: bool,
    unreliable_labels: str,
) -> dict[str, Any]:
    """`convert_release`'s work, with `out`'s lock held."""
    t_start = time.perf_counter()
    gated, nongated, scores = inputs
    # Invalidate the old index first: an interrupted run then leaves no manifest behind.
    for old in ("manifest.json", "report.json"):
        (out / old).unlink(missing_ok=True)
    cache_dir = out / "cache"
    cache_dir.mkdir(exist_ok=True)
    for stale in [*out.glob(".*.tmp"), *cache_dir.glob(".*.tmp")]:  # left by a killed run
        stale.unlink(missing_ok=True)  # the lock is ours: no other run writes here now
    tasks = [(str(release), "gated", str(p), str(cache_dir)) for p in gated.with_dicom]
    tasks += [(str(release), "nongated", n, str(cache_dir)) for n in nongated]

    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:  # spawn: fork is unsafe once JAX (or any threaded library) is loaded
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(context.Pool(workers, initializer=_ignore_sigint))
        try:
            summaries = _run(_prepare_task, tasks, pool, "studies", progress)
        except Exception as e:
            if not _no_space(e):
                raise
            need = 4.5 * sum(  # records ~1.5x the int16 pixels, in the cache and 2 shards
                f.stat().st_size
                for _, kind, ident, _ in tasks
                for f in _study_inputs(release, kind, ident)
            )
            raise _disk_full(out, f"the study cache in {cache_dir}", need) from e
        t_loaded = time.perf_counter()
        ok, split_of, members = _assign(summaries, scores, seed, unreliable_labels)
        plans, starts = {}, {}
        for split in SPLITS:
            plans[split], starts[split] = _plan_split(
                out, split, members[split], cache_dir, shards_per_split
            )
        shard_tasks = [t for split in SPLITS for t in plans[split]]
        try:
            counts = iter(_run(_write_shard_task, shard_tasks, pool, "shards", progress))
        except Exception as e:
            if not _no_space(e):
                raise
            raise _disk_full(out, "the shards", _shard_bytes(shard_tasks)) from e
    splits = {}
    for split in SPLITS:
        shard_list = [{"path": Path(t[0]).name, **next(counts)} for t in plans[split]]
        splits[split] = {
            "shards": shard_list,
            "num_records": sum(sh["num_records"] for sh in shard_list),
            "num_studies": len(members[split]),
            "num_positive": sum(s["calcified_slices"] for s in members[split]),
        }
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
    keep = {sh["path"] for sp in splits.values() for sh in sp["shards"]}
    for old in out.glob("*-of-*.array_record"):
        if old.name not in keep:
            old.unlink()
    t_end = time.perf_counter()
    report = convert_report.build_report(gated, summaries, scores, splits, studies, len(tasks))
    for warning in report["warnings"]:
        logging.warning("%s", warning)
    total_slices = sum(s["num_slices"] for s in ok)
    report["timings"] = {
        "load_s": round(t_loaded - t_start, 3),
        "write_s": round(t_end - t_loaded, 3),
        "total_s": round(t_end - t_start, 3),
        "slices": total_slices,
        "slices_per_s": round(total_slices / max(t_end - t_start, 1e-9), 2),
        "workers": int(workers),
    }
    try:
        _atomic_write(out / "report.json", (json.dumps(report, indent=1) + "\n").encode())
        if not keep_cache:
            for p in [*cache_dir.glob("*.records"), *cache_dir.glob("*.json")]:
                p.unlink()
            with contextlib.suppress(OSError):  # not empty: something else lives there
                cache_dir.rmdir()
        # Last: only a finished conversion leaves a manifest (module docstring).
        manifest.save(
            {
                "record_version": records.VERSION,
                "seed": int(seed),
                "unreliable_labels": unreliable_labels,
                "splits": splits,
                "studies": studies,
            },
            out / "manifest.json",
        )
    except OSError as e:
        if not _no_space(e):
            raise
        raise _disk_full(out, "report.json / manifest.json", 1e6) from e
    return report
