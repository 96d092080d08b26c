"""Throughput of the pretraining input pipeline on real-size (512 x 512) synthetic records.

    python tools/bench_pipeline.py --workers=0,1,2 --seconds=20 [--records=1024]
    python tools/bench_pipeline.py --op_only --seconds=10

Prints one JSON line per run: ``workers``, ``samples_per_s`` (slices per second, each a
full multi-crop of ``n_global`` x global + ``n_local`` x local crops, every augmentation
on at its default probability), ``crops_per_s``, ``cpu_s_per_sample`` and
``samples_per_cpu_s`` (CPU time of this process and its Grain workers: the per-core
figure, robust to other load on the machine), ``main_cpu_s_per_sample`` (this process).
``--op_only``: record decode + MultiCrop in a plain loop on one core, no Grain, no read.

Records: 512 x 512, written like the converter's (`convert.WRITER_OPTIONS`: uncompressed
chunks of one record). Keep ``--records`` in the thousands: Grain's index shuffle costs
~2.6 ms per element on a 32-record split (0.1 ms at 1000, 5 us at 1e5), which would
dominate a toy-size benchmark. Set OMP_NUM_THREADS=1 / OPENBLAS_NUM_THREADS=1 for a
per-core figure.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time

from absl import app, flags

from dinolg_jax.data import convert, pipeline, synthetic_records
from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data.multicrop import MultiCrop

_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts, one run each.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Timed seconds per run (after the first batch).")
_RECORDS = flags.DEFINE_integer("records", 1024, "Synthetic 512 x 512 records to write.")
_DISTINCT = flags.DEFINE_integer("distinct", 64, "Different images among the records.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_VARIANT = flags.DEFINE_enum("variant", "dinolg", ["dino", "dinolg"], "Crop recipe.")
_OP_ONLY = flags.DEFINE_bool("op_only", False, "Time decode + MultiCrop in-loop only.")


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


def _report(workers, samples, wall, cpu, main_cpu, data) -> None:
    crops = data.n_global + data.n_local_random + data.n_local_guided
    print(
        json.dumps(
            {
                "workers": workers,
                "samples_per_s": round(samples / wall, 1),
                "crops_per_s": round(samples * crops / wall, 1),
                "cpu_s_per_sample": round(cpu / samples, 5),
                "samples_per_cpu_s": round(samples / cpu, 1),
                "main_cpu_s_per_sample": round(main_cpu / samples, 5),
                "samples": samples,
                "seconds": round(wall, 2),
                "load_avg_1m": os.getloadavg()[0],
                "cpus": os.cpu_count(),
            }
        ),
        flush=True,
    )


def main(argv: list[str]) -> None:
    del argv
    data = pipeline.default_data_config(_VARIANT.value)
    data.batch_size, data.read_threads = _BATCH.value, 0
    with tempfile.TemporaryDirectory() as tmp:
        studies = -(-_RECORDS.value // 8)
        path = synthetic_records.write_dataset(
            tmp,
            size=512,
            studies=studies,
            slices_per_study=8,
            writer_options=convert.WRITER_OPTIONS,
            distinct=_DISTINCT.value,
        )
        manifest = manifest_lib.load(path)
        if _OP_ONLY.value:
            import grain
            import numpy as np

            source = grain.sources.ArrayRecordDataSource(manifest.shard_paths("pretrain"))
            blobs = [source[i] for i in range(min(_DISTINCT.value, len(source)))]  # in memory
            op, decode = MultiCrop.from_config(data), pipeline.DecodeRecord(MultiCrop.RECORD_FIELDS)
            n, t0, c0, p0 = 0, time.perf_counter(), _cpu_s(), time.process_time()
            while time.perf_counter() - t0 < _SECONDS.value:
                op.random_map(
                    decode.map(blobs[n % len(blobs)]), np.random.Generator(np.random.Philox(n))
                )
                n += 1
            cpu, main = _cpu_s() - c0, time.process_time() - p0
            _report("op_only", n, time.perf_counter() - t0, cpu, main, data)
            return
        for workers in map(int, _WORKERS.value):
            data.worker_count = workers
            it = iter(pipeline.pretrain_dataset(manifest, data, process_index=0, process_count=1))
            next(it)  # start-up (worker spawn, first batch) is not timed
            n, t0, c0, p0 = 0, time.perf_counter(), _cpu_s(), time.process_time()
            while time.perf_counter() - t0 < _SECONDS.value:
                n += len(next(it)["has_calcium"])
            cpu, main = _cpu_s() - c0, time.process_time() - p0
            _report(workers, n, time.perf_counter() - t0, cpu, main, data)
            if hasattr(it, "close"):
                it.close()


if __name__ == "__main__":
    app.run(main)
