"""Benchmark of scoring.agatston: ms per 512x512 slice on one core, printed as one JSON line.

The synthetic study is typical of gated calcium CT: soft tissue around 40 HU, bone
(> 130 HU, outside every vessel label) in a ring and a spine block, and a handful of
labelled lesions of 5-300 pixels on a few slices.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_agatston.py --slices=50 --repeats=20
"""

from __future__ import annotations

import json
import time

import numpy as np
from absl import app, flags

from dinolg_jax.scoring.agatston import agatston

_SLICES = flags.DEFINE_integer("slices", 50, "Slices in the synthetic study.")
_SIZE = flags.DEFINE_integer("size", 512, "Slice height and width, pixels.")
_LESIONS = flags.DEFINE_integer("lesions", 8, "Number of labelled lesions.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls (the median is reported).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic study.")


def synthetic_study(slices: int, size: int, n_lesions: int, seed: int):
    """Returns (hu int16 [Z, H, W], labels uint8 [Z, H, W]) of a synthetic study."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 15, size=(slices, size, size)).astype(np.int16)
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    hu[:, (radius > 0.42 * size) & (radius < 0.45 * size)] = 700  # ribs / sternum ring
    hu[:, int(0.75 * size) : int(0.85 * size), int(0.45 * size) : int(0.55 * size)] = 900
    labels = np.zeros(hu.shape, np.uint8)
    for _ in range(n_lesions):
        z = rng.integers(0, slices)
        area = rng.integers(5, 301)
        half = max(1, int(np.sqrt(area / np.pi)))
        r, c = rng.integers(size // 4, 3 * size // 4, size=2)
        blob = (
            np.hypot(
                yy[r - half : r + half + 1, c - half : c + half + 1] - r,
                xx[r - half : r + half + 1, c - half : c + half + 1] - c,
            )
            <= half
        )
        region = (z, slice(r - half, r + half + 1), slice(c - half, c + half + 1))
        labels[region][blob] = rng.integers(1, 5)
        hu[region][blob] = rng.integers(130, 900, size=int(blob.sum()))
    return hu, labels


def main(argv: list[str]) -> None:
    del argv
    hu, labels = synthetic_study(_SLICES.value, _SIZE.value, _LESIONS.value, _SEED.value)
    result = agatston(hu, labels, (0.4, 0.4), 3.0)  # warm-up
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        agatston(hu, labels, (0.4, 0.4), 3.0)
        times.append(time.perf_counter() - start)
    ms = 1000 * float(np.median(times))
    print(
        json.dumps(
            {
                "slices": _SLICES.value,
                "size": _SIZE.value,
                "lesions": len(result.lesions),
                "total": round(result.total, 3),
                "ms_per_study": round(ms, 3),
                "ms_per_slice": round(ms / _SLICES.value, 4),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
