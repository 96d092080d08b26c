"""The conversion engine both converters run: from the folder lock to the manifest, last.

A converter (`convert` for a COCA release, `convert_folder` for any CT collection) knows
how to read and label one study and how to split its studies; everything about writing
the dataset is here, the same for both:

1. `DatasetWriter` (a context manager) takes ``<out>/.lock`` (`runtime.folder_lock`: a
   second conversion into the folder fails at once with `FolderBusyError`), removes the
   old ``manifest.json`` and ``report.json`` first (an interrupted conversion then leaves
   no index and the folder does not look complete), creates ``<out>/cache/``, removes
   temp files a killed run left, and starts the worker processes (spawn; they ignore
   Ctrl-C, which is the main process's to report).
2. `DatasetWriter.prepare` runs the converter's per-study function over its tasks, in
   the workers, in task order. Each returns a JSON-able summary with at least
   ``study_id``, ``num_slices`` and ``fingerprint`` (its inputs' names, sizes, mtimes and
   the code's version) and keeps a cache entry: `cached_summary` reuses one whose
   fingerprint matches (a re-run resumes), else `encode_records` and `save_study` write
   ``<study_id>.records`` (records `frame`d; `read_cached` reads them back) and then
   ``<study_id>.json`` (the summary).
3. `DatasetWriter.write_splits` cuts each split's studies (in order) into at most
   ``shards_per_split`` shards of near-equal record counts (`plan_split`), writes them
   from the caches (`write_shard`, in the workers), and removes shards of an earlier run
   that the new plan does not name.
4. `DatasetWriter.finish` adds ``timings`` to the converter's report, writes
   ``report.json``, removes the cache (unless kept) and writes ``manifest.json`` last.

Every file is written atomically (`atomic_write`: a temp name unique to the writing
process, then ``os.replace``), so the same inputs and seed give byte-identical shards for
any worker count. A full disk in any phase stops the conversion with one `ConvertError`
naming the folder, the space needed (the caller's estimate for the cache, the caches'
size pro rata for the shards, `shard_bytes`) and the space free.
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import shutil
import signal
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from absl import logging
from tqdm import tqdm

from dinolg_jax.data import manifest, records, shards
from dinolg_jax.runtime.folder_lock import FolderBusyError, FolderLock

__all__ = [
    "WRITER_OPTIONS",
    "ConvertError",
    "DatasetWriter",
    "FolderBusyError",
    "ShardTask",
    "atomic_write",
    "cached_summary",
    "encode_records",
    "format_tail",
    "frame",
    "interrupted_message",
    "plan_split",
    "read_cached",
    "run_tasks",
    "save_study",
    "shard_bytes",
    "write_shard",
]

SPLITS = manifest.SPLITS
# One record per chunk (O(1) random access), stored uncompressed: reading is the
# pretraining pipeline's hot path (docs/measurements.md#record-codec); disk costs 2x.
WRITER_OPTIONS = "group_size:1,uncompressed"
_LEN = struct.Struct("<I")  # a cache record's length prefix, little-endian uint32

# A shard to write: its path and its (cache file, first record, number of records) segments.
ShardTask = tuple[str, list[tuple[str, int, int]]]


class ConvertError(RuntimeError):
    """A conversion that cannot produce a consistent output."""


def atomic_write(path: Path, data: bytes) -> None:
    """Writes `data` to `path` through a temp file in the same folder, then renames it.

    The file gets the usual permissions (0666 less the umask); on any failure the temp
    file is removed and `path` is as it was.
    """
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


def frame(blobs: Iterable[bytes]) -> bytes:
    """A per-study cache file's bytes: each encoded record after its uint32 length."""
    chunks = []
    for blob in blobs:
        chunks += [_LEN.pack(len(blob)), blob]
    return b"".join(chunks)


def encode_records(slice_records: Iterable[dict[str, Any]]) -> tuple[list[bytes], int]:
    """A study's slice records encoded (`records.encode`), and how many have
    ``has_calcium`` (any label on the slice)."""
    blobs, positive = [], 0
    for rec in slice_records:
        blobs.append(records.encode(rec))
        positive += bool(rec["has_calcium"])
    return blobs, positive


def cached_summary(cache_dir: Path, study_id: str, fingerprint: str) -> dict[str, Any] | None:
    """The summary of a study's cache entry (``<study_id>.json`` beside its ``.records``)
    when both files are there and the entry's fingerprint is `fingerprint`, else None."""
    meta_path = cache_dir / f"{study_id}.json"
    if meta_path.is_file() and (cache_dir / f"{study_id}.records").is_file():
        cached = json.loads(meta_path.read_text())
        if cached.get("fingerprint") == fingerprint:
            return cached
    return None


def save_study(cache_dir: Path, summary: dict[str, Any], blobs: list[bytes]) -> None:
    """A study's cache entry: its records (`frame`d) to ``<study_id>.records``, then its
    summary (sorted keys) to ``<study_id>.json``, each atomically."""
    sid = summary["study_id"]
    atomic_write(cache_dir / f"{sid}.records", frame(blobs))
    atomic_write(cache_dir / f"{sid}.json", json.dumps(summary, sort_keys=True).encode())


def read_cached(path: Path, skip: int, count: int) -> Iterator[bytes]:
    """Records `skip` .. `skip + count` of a per-study cache file (`frame`).

    Raises:
      ConvertError: the file holds fewer records, or one is cut short.
    """
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
                for blob in read_cached(Path(cache), skip, count):
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


def _write_shard_task(task: ShardTask) -> dict[str, Any]:
    return write_shard(*task)


def shard_bytes(tasks: list[ShardTask]) -> float:
    """Bytes the shards of `tasks` need, from their cache segments (records pro rata).

    A segment's share of its cache file is its record count over the study's
    ``num_slices`` (from the cache's ``.json`` summary beside it); a missing cache counts 0.
    """
    total = 0.0
    for _, segments in tasks:
        for cache, _, count in segments:
            path = Path(cache)
            meta = path.with_suffix(".json")
            n = json.loads(meta.read_text())["num_slices"] if meta.is_file() else count
            total += path.stat().st_size * count / max(n, 1) if path.is_file() else 0
    return total


def plan_split(
    out: Path, split: str, studies: list[dict], cache_dir: Path, n_shards: int
) -> tuple[list[ShardTask], dict[str, int]]:
    """The shards of one split and each study's first record index in it.

    The split's records (its studies' slices, in order) are cut into ``k = min(n_shards,
    records)`` shards, shard ``i`` holding records ``records * i // k`` up to
    ``records * (i + 1) // k``, named ``<split>-<i:05d>-of-<k:05d>.array_record``.

    Args:
      out: the output folder.
      split: the split's name.
      studies: the split's study summaries in record order (``study_id``, ``num_slices``).
      cache_dir: the per-study caches (``<study_id>.records``).
      n_shards: the most shards.

    Returns:
      (shard tasks, {study id: index of its first record in the split}); both empty for
      a split without records.
    """
    total = sum(s["num_slices"] for s in studies)
    if total == 0:  # an empty split (e.g. a tiny release without val/test patients)
        return [], {}
    k = min(n_shards, total)
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


def run_tasks(fn: Callable[[Any], Any], tasks: list, pool: Any, desc: str, progress: bool) -> list:
    """`fn` over `tasks` in order, in `pool` when given (else here), with a progress bar."""
    results = []
    with tqdm(total=len(tasks), desc=desc, disable=not progress) as bar:
        stream = pool.imap(fn, tasks, chunksize=1) if pool is not None else map(fn, tasks)
        for r in stream:
            results.append(r)
            bar.update(1)
    return results


def _no_space(err: BaseException | None) -> bool:
    """Whether `err` (or what it wraps) is a full disk."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def _disk_full_is_one_error(out: Path, what: str, need_bytes: Callable[[], float]) -> Iterator:
    """Re-raises a full disk inside the block as one `ConvertError` (module docstring)."""
    try:
        yield
    except Exception as e:
        if not _no_space(e):
            raise
        free = shutil.disk_usage(out).free if out.exists() else 0
        raise ConvertError(
            f"{out}: disk full while writing {what}: the conversion needs about "
            f"{need_bytes() / 1e6:,.0f} MB more there, {free / 1e6:,.0f} MB are free; free "
            "some space (or choose another --out) and re-run: no manifest was written, "
            "finished studies are reused"
        ) from e


def _ignore_sigint() -> None:
    """Worker initialiser: Ctrl-C is the main process's to handle (one message, no
    traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def interrupted_message(out: str | Path) -> str:
    """What a conversion tool says when Ctrl-C stopped it (nothing of the index is left)."""
    return (
        f"interrupted: no manifest.json was written in {out}; re-run the same command to "
        "resume (finished studies are reused)"
    )


def format_tail(report: dict[str, Any]) -> list[str]:
    """The last lines of a conversion's printed summary: the time line (from the
    report's ``timings``, when there) and one ``WARNING:`` line per warning."""
    lines, t = [], report.get("timings", {})
    if t:
        lines.append(
            f"time: {t['total_s']:.1f} s ({t['load_s']:.1f} s loading, {t['write_s']:.1f} s "
            f"writing), {t['slices']} slices, {t['slices_per_s']:.1f} slices/s, "
            f"{t['workers']} worker(s)"
        )
    return lines + [f"WARNING: {w}" for w in report.get("warnings", [])]


class DatasetWriter:
    """One conversion's output folder, held from the lock to the manifest (module docstring).

    Use as ``with DatasetWriter(out, ...) as w:``, then ``w.prepare``, ``w.write_splits``
    and ``w.finish`` in that order; the lock and the worker processes end with the block.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        workers: int = 1,
        shards_per_split: int = 4,
        keep_cache: bool = False,
        progress: bool = True,
    ) -> None:
        """Args: out: the output folder (created); workers: processes (1 = this one);
        shards_per_split: the most shards a split gets; keep_cache: keep ``out/cache``
        for a faster re-run; progress: tqdm progress bars."""
        self.out = Path(out)
        self.cache_dir = self.out / "cache"
        self.workers = int(workers)
        self.shards_per_split = int(shards_per_split)
        self.keep_cache = keep_cache
        self.progress = progress
        self._stack = contextlib.ExitStack()
        self._pool: Any = None
        self._t_start = self._t_loaded = self._t_written = 0.0

    def __enter__(self) -> DatasetWriter:
        with self._stack as stack:
            stack.enter_context(FolderLock(self.out, "conversion"))
            self._t_start = time.perf_counter()
            # Invalidate the old index first: an interrupted run then leaves no manifest.
            for old in ("manifest.json", "report.json"):
                (self.out / old).unlink(missing_ok=True)
            self.cache_dir.mkdir(exist_ok=True)
            for stale in [*self.out.glob(".*.tmp"), *self.cache_dir.glob(".*.tmp")]:
                stale.unlink(missing_ok=True)  # left by a killed run; the lock is ours
            if self.workers > 1:  # spawn: fork is unsafe once JAX (or any threads) is loaded
                context = multiprocessing.get_context("spawn")
                self._pool = stack.enter_context(
                    context.Pool(self.workers, initializer=_ignore_sigint)
                )
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool = None
        self._stack.close()

    def prepare(
        self, fn: Callable[[Any], dict], tasks: list, need_bytes: Callable[[], float]
    ) -> list[dict]:
        """Phase 1: `fn` (a module-level function, for the workers) over `tasks`, in order.

        Args:
          fn: one task -> the study's summary (writes the study's cache file).
          tasks: picklable tasks.
          need_bytes: the space the whole conversion needs, for a full disk's message.

        Returns:
          The summaries, in task order.
        """
        with _disk_full_is_one_error(self.out, f"the study cache in {self.cache_dir}", need_bytes):
            summaries = run_tasks(fn, tasks, self._pool, "studies", self.progress)
        self._t_loaded = time.perf_counter()
        return summaries

    def write_splits(
        self, members: dict[str, list[dict]], positive_key: str
    ) -> tuple[dict[str, dict], dict[str, dict[str, int]]]:
        """Phase 2: every split's shards from the studies' caches.

        Args:
          members: {split: study summaries in record order} for each of `manifest.SPLITS`.
          positive_key: the summaries' count of positive slices (``num_positive``).

        Returns:
          (the manifest's ``splits``: {split: {"shards": [{"path", "num_records", "bytes",
          "sha256"}], "num_records", "num_studies", "num_positive"}}, {split: {study id:
          index of its first record there}}).
        """
        plans, starts = {}, {}
        for split in SPLITS:
            plans[split], starts[split] = plan_split(
                self.out, split, members[split], self.cache_dir, self.shards_per_split
            )
        tasks = [t for split in SPLITS for t in plans[split]]
        with _disk_full_is_one_error(self.out, "the shards", lambda: shard_bytes(tasks)):
            infos = iter(run_tasks(_write_shard_task, tasks, self._pool, "shards", self.progress))
        splits = {}
        for split in SPLITS:
            shard_list = [{"path": Path(t[0]).name, **next(infos)} for t in plans[split]]
            splits[split] = {
                "shards": shard_list,
                "num_records": sum(sh["num_records"] for sh in shard_list),
                "num_studies": len(members[split]),
                "num_positive": sum(s[positive_key] for s in members[split]),
            }
        keep = {sh["path"] for sp in splits.values() for sh in sp["shards"]}
        for old in self.out.glob("*-of-*.array_record"):
            if old.name not in keep:
                old.unlink()
        self._t_written = time.perf_counter()
        return splits, starts

    def finish(self, report: dict[str, Any], index: dict[str, Any], slices: int) -> dict[str, Any]:
        """Phase 3: the report (with ``timings``), the cache removed, the manifest last.

        Args:
          report: the converter's report; its ``warnings`` are logged, ``timings`` added
            (seconds loading, writing and in all, `slices` and slices per second, workers).
          index: the manifest's content (`manifest.save`).
          slices: the slices converted.

        Returns:
          `report`, as written to ``report.json``.
        """
        for warning in report["warnings"]:
            logging.warning("%s", warning)
        t0, t1, t2 = self._t_start, self._t_loaded, self._t_written
        report["timings"] = {
            "load_s": round(t1 - t0, 3),
            "write_s": round(t2 - t1, 3),
            "total_s": round(t2 - t0, 3),
            "slices": slices,
            "slices_per_s": round(slices / max(t2 - t0, 1e-9), 2),
            "workers": self.workers,
        }
        with _disk_full_is_one_error(self.out, "report.json / manifest.json", lambda: 1e6):
            text = json.dumps(report, indent=1) + "\n"
            atomic_write(self.out / "report.json", text.encode())
            if not self.keep_cache:
                for p in [*self.cache_dir.glob("*.records"), *self.cache_dir.glob("*.json")]:
                    p.unlink()
                with contextlib.suppress(OSError):  # not empty: something else lives there
                    self.cache_dir.rmdir()
            manifest.save(index, self.out / "manifest.json")  # last: only a finished run
        return report
