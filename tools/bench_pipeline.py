"""Throughput of the pretraining input pipeline beside a plain OpenCV baseline, same run.

    OMP_NUM_THREADS=1 python tools/bench_pipeline.py --workers=0,1,2 --seconds=3 --rounds=7
    python tools/bench_pipeline.py --op_only --seconds=10

Each round times, one after the other on the same records: the plain OpenCV baseline
(`bench_opencv_baseline.py`, one core, noise drawn fresh and from the noise table),
decode + MultiCrop in a loop (``op``), and the whole Grain pipeline for every
``--workers`` count. One JSON line per run: ``run``, ``samples_per_s`` (slices per
second, each a full multi-crop of ``n_global`` x global + ``n_local`` x local crops,
every augmentation at its default probability), ``crops_per_s``, ``samples_per_cpu_s``
(CPU time of this process and its Grain workers: the per-core figure, robust to other
load) and ``main_cpu_s_per_sample``. The last line (``"summary"``) has the medians over
rounds and the ratios ``workers_W / baseline``, each the median over rounds of that round's
ratio (runs of a round are side by side in time). ``--op_only``: only ``op``.

Records: 512 x 512, written like the converter's (`convert.WRITER_OPTIONS`). Keep
``--records`` in the thousands: Grain's index shuffle costs ~2.6 ms per element on a
32-record split (0.1 ms at 1000, 5 us at 1e5). Set OMP_NUM_THREADS=1 for a per-core
figure; on a shared machine compare the ratios, not the absolute rates.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import tempfile
import time

import grain
import numpy as np
from absl import app, flags
from bench_opencv_baseline import time_baseline

from configs import common
from dinolg_jax.data import convert, pipeline
from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data.multicrop import MultiCrop
from dinolg_jax.phantom import synthetic_records

_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts, one run each.")
_SECONDS = flags.DEFINE_float("seconds", 8.0, "Timed seconds per run (after the first batch).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds (medians are reported).")
_RECORDS = flags.DEFINE_integer("records", 1024, "Synthetic 512 x 512 records to write.")
_DISTINCT = flags.DEFINE_integer("distinct", 64, "Different images among the records.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_VARIANT = flags.DEFINE_enum("variant", "dinolg", ["dino", "dinolg"], "Crop recipe.")
_DTYPE = flags.DEFINE_enum("batch_dtype", "float32", ["float32", "uint16"], "Crop dtype.")
_OP_ONLY = flags.DEFINE_bool("op_only", False, "Time decode + MultiCrop in a loop only.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", True, "Also time each stage alone (CPU us/sample).")


def _cpu_s() -> float:
    """CPU seconds of this process and its live descendants (Grain workers), from /proc."""
    procs = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(stat.split("/")[2])] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    mine = {os.getpid()}
    for _ in range(4):  # a few generations deep
        mine |= {pid for pid, (ppid, _) in procs.items() if ppid in mine}
    return sum(procs[pid][1] for pid in mine if pid in procs) / os.sysconf("SC_CLK_TCK")


def _report(run, samples, wall, cpu, main_cpu, crops) -> dict:
    row = {
        "run": run,
        **({"workers": int(run.split("_")[1])} if run.startswith("workers_") else {}),
        "samples_per_s": round(samples / wall, 1),
        "crops_per_s": round(samples * crops / wall, 1),
        "samples_per_cpu_s": round(samples / cpu, 1),
        "main_cpu_s_per_sample": round(main_cpu / samples, 5),
        "samples": samples,
        "seconds": round(wall, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(row), flush=True)
    return row


def _time_op(blobs, data, seconds):
    op, decode = MultiCrop.from_config(data), pipeline.DecodeRecord(MultiCrop.RECORD_FIELDS)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        op.random_map(decode.map(blobs[n % len(blobs)]), np.random.Generator(np.random.Philox(n)))
        n += 1
    return n, time.perf_counter() - t0, time.process_time() - c0


def _time_pipeline(manifest, data, seconds):
    it = iter(pipeline.pretrain_dataset(manifest, data, process_index=0, process_count=1))
    next(it)  # start-up (worker spawn, first batch) is not timed
    n, t0, c0, p0 = 0, time.perf_counter(), _cpu_s(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)["has_calcium"])
    wall, cpu, main = time.perf_counter() - t0, _cpu_s() - c0, time.process_time() - p0
    if hasattr(it, "close"):
        it.close()
    return n, wall, cpu, main


def _breakdown(manifest, data, n=256) -> dict:
    """CPU microseconds per sample of each stage of the workers-0 pipeline, timed alone."""
    source = grain.sources.ArrayRecordDataSource(manifest.shard_paths("pretrain"))
    shuffled = grain.MapDataset.range(len(source)).seed(data.seed).shuffle()
    op, decode = MultiCrop.from_config(data), pipeline.DecodeRecord(MultiCrop.RECORD_FIELDS)
    batch_fn = pipeline.CropsMajorBatch(op, data.batch_dtype)
    us = {}

    def timed(name, fn):
        fn()  # warm: first touches, scratch buffers, the noise table
        t = time.process_time()
        out = fn()
        us[name] = round((time.process_time() - t) / n * 1e6, 1)
        return out

    order = timed("shuffle_index", lambda: [shuffled[i] for i in range(n)])
    blobs = timed("read", lambda: [source[i] for i in order])
    recs = timed("decode", lambda: [decode.map(b) for b in blobs])
    gens = [np.random.Generator(np.random.Philox(i)) for i in range(n)]
    plans = timed("plan", lambda: [op.plan(r, g) for r, g in zip(recs, gens, strict=True)])
    timed("render_batches", lambda: [batch_fn(plans[i : i + 32]) for i in range(0, n, 32)])
    return {"breakdown_cpu_us_per_sample": us, "sum_us": round(sum(us.values()), 1)}


def main(argv: list[str]) -> None:
    del argv
    data = common.data_config(_VARIANT.value)
    data.batch_size, data.read_threads, data.batch_dtype = _BATCH.value, 0, _DTYPE.value
    crops = data.n_global + data.n_local_random + data.n_local_guided
    rows = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic_records.write_dataset(
            tmp,
            size=512,
            studies=-(-_RECORDS.value // 8),
            slices_per_study=8,
            splits=("pretrain",),
            writer_options=convert.WRITER_OPTIONS,
            distinct=_DISTINCT.value,
        )
        manifest = manifest_lib.load(path)
        source = grain.sources.ArrayRecordDataSource(manifest.shard_paths("pretrain"))
        blobs = [source[i] for i in range(min(_DISTINCT.value, len(source)))]  # in memory
        for _ in range(_ROUNDS.value):
            runs = [("op", lambda: _time_op(blobs, data, _SECONDS.value))]
            if not _OP_ONLY.value:
                for noise in ("fresh", "table"):
                    fn = lambda noise=noise: time_baseline(blobs, data, _SECONDS.value, noise)
                    runs.insert(0, (f"baseline_{noise}", fn))
            for run, fn in runs:
                n, wall, cpu = fn()
                rows[run].append(_report(run, n, wall, cpu, cpu, crops))
            for workers in [] if _OP_ONLY.value else map(int, _WORKERS.value):
                data.worker_count = workers
                n, wall, cpu, main_cpu = _time_pipeline(manifest, data, _SECONDS.value)
                run = f"workers_{workers}"
                rows[run].append(_report(run, n, wall, cpu, main_cpu, crops))
        breakdown = _breakdown(manifest, data) if _BREAKDOWN.value else {}
    keys = ("samples_per_s", "samples_per_cpu_s")
    med = {
        run: {k: round(float(np.median([r[k] for r in rs])), 1) for k in keys}
        for run, rs in rows.items()
    }
    summary = {"summary": True, "rounds": _ROUNDS.value, "batch_dtype": _DTYPE.value, **med}
    summary.update(breakdown)
    for key in med:
        for base in ("baseline_fresh", "baseline_table"):
            if key.startswith(("workers", "op")) and base in med:
                for k in keys:  # median over rounds of the same round's ratio (paired)
                    pairs = zip(rows[key], rows[base], strict=True)
                    ratio = np.median([a[k] / b[k] for a, b in pairs])
                    summary[f"{key}/{base}[{k}]"] = round(float(ratio), 2)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    app.run(main)
