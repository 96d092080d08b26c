"""Benchmark of scoring.agatston beside a straightforward scipy reference, same run, one core.

The synthetic study is typical of gated calcium CT, made noisy: soft tissue at 40 HU with
Gaussian noise of ``--noise_hu`` (75 HU: about 19 % of all pixels reach 130 HU, bone
included), bone (> 130 HU, outside every vessel label) in a ring and a spine block, and a
handful of labelled lesions of 5-300 pixels on a few slices. The reference thresholds
and labels every labelled slice per vessel with ``scipy.ndimage`` (its cost follows the
image); `agatston` should follow the labelled pixels. Interleaved repetitions, medians;
prints one JSON line with both, their ratio and whether the scores agree exactly.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_agatston.py --slices=50 --repeats=20
    .venv/bin/python tools/bench_agatston.py --labels_dtype=int32   # U-Net argmax labels
"""

from __future__ import annotations

import json
import time

import numpy as np
from absl import app, flags
from scipy import ndimage

from dinolg_jax.scoring.agatston import VESSELS, agatston

_SLICES = flags.DEFINE_integer("slices", 50, "Slices in the synthetic study.")
_SIZE = flags.DEFINE_integer("size", 512, "Slice height and width, pixels.")
_LESIONS = flags.DEFINE_integer("lesions", 8, "Number of labelled lesions.")
_NOISE = flags.DEFINE_float("noise_hu", 75.0, "Standard deviation of the tissue noise, HU.")
_LABELS = flags.DEFINE_enum("labels_dtype", "uint8", ["uint8", "int32", "int64"], "Label dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls of each (medians are reported).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic study.")


def synthetic_study(slices: int, size: int, n_lesions: int, seed: int, noise_hu: float = 15.0):
    """Returns (hu int16 [Z, H, W], labels uint8 [Z, H, W]) of a synthetic study."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, noise_hu, size=(slices, size, size)).astype(np.int16)
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
        win = (slice(r - half, r + half + 1), slice(c - half, c + half + 1))
        blob = np.hypot(yy[win] - r, xx[win] - c) <= half
        region = (z, *win)
        labels[region][blob] = rng.integers(1, 5)
        hu[region][blob] = rng.integers(130, 900, size=int(blob.sum()))
    return hu, labels


def scipy_reference(hu, labels, pixel_mm, thickness_mm, threshold_hu=130.0, min_area_mm2=1.0):
    """Per-vessel Agatston the straightforward way: per labelled slice and vessel, threshold,
    `ndimage.label` (4-connected) and per-lesion area and peak HU."""
    pixel_area = pixel_mm[0] * pixel_mm[1]
    per_vessel = dict.fromkeys(VESSELS, 0.0)
    for z in np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1)):
        cand = hu[z] >= threshold_hu
        for v, name in enumerate(VESSELS, start=1):
            comp, n = ndimage.label(cand & (labels[z] == v))
            if n == 0:
                continue
            area = np.bincount(comp.ravel(), minlength=n + 1)[1:] * pixel_area
            peak = ndimage.maximum(hu[z], comp, np.arange(1, n + 1))
            weight = 1 + np.searchsorted([200.0, 300.0, 400.0], peak, side="right")
            keep = area >= min_area_mm2 * (1 - 1e-9)
            per_vessel[name] += float(np.sum(area[keep] * weight[keep])) * thickness_mm / 3.0
    return per_vessel


def main(argv: list[str]) -> None:
    del argv
    hu, labels = synthetic_study(
        _SLICES.value, _SIZE.value, _LESIONS.value, _SEED.value, _NOISE.value
    )
    labels = labels.astype(_LABELS.value)
    ours = lambda: agatston(hu, labels, (0.4, 0.4), 3.0)
    ref = lambda: scipy_reference(hu, labels, (0.4, 0.4), 3.0)
    result, expected = ours(), ref()  # warm-up
    times = {"ours": [], "ref": []}
    for _ in range(_REPEATS.value):
        for name, fn in (("ours", ours), ("ref", ref)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    print(
        json.dumps(
            {
                "slices": _SLICES.value,
                "size": _SIZE.value,
                "labels_dtype": _LABELS.value,
                "frac_ge_130hu": round(float(np.mean(hu >= 130)), 3),
                "labelled_px": int(np.count_nonzero(labels)),
                "lesions": len(result.lesions),
                "total": round(result.total, 3),
                "agrees_with_reference": all(
                    np.isclose(result.per_vessel[k], expected[k], rtol=1e-12, atol=0)
                    for k in VESSELS
                ),
                "ms_per_slice": round(ms["ours"] / _SLICES.value, 4),
                "ref_ms_per_slice": round(ms["ref"] / _SLICES.value, 4),
                "ref_over_ours": round(ms["ref"] / ms["ours"], 2),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
