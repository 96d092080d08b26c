"""Benchmark-only: the pretraining multi-crop written the plain OpenCV way, for comparison.

What a user would write instead of `dinolg_jax.data.multicrop` (the albumentations style):
per crop, torchvision's random-resized-crop box rule in a Python loop, then
``cv2.resize`` (INTER_LINEAR), ``cv2.flip``, ``cv2.GaussianBlur`` (BORDER_REFLECT),
brightness and Gaussian noise with numpy, each step a new array, and ``np.stack`` at the
end. Same recipe and probabilities as ``configs/common.py:data_config`` (guided local
crops centred on a lesion), same partial record decode, one core. Not in the package;
`tools/bench_pipeline.py` runs it beside the pipeline.

``noise="fresh"`` draws the noise as albumentations does (``standard_normal`` per crop
from the sample's generator); ``noise="table"`` reads windows of the project's noise table
instead (the stronger baseline: only the crop code differs then).

    OMP_NUM_THREADS=1 python tools/bench_opencv_baseline.py --seconds=10 --noise=fresh
"""

from __future__ import annotations

import json
import math
import time

import cv2
import numpy as np
from absl import app, flags

from configs import common
from dinolg_jax.data import records, transforms
from dinolg_jax.phantom import synthetic_records


def _box(rng, height, width, scale, ratio):
    """torchvision RandomResizedCrop.get_params, one box: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    h, w = height, width
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    return (height - h) // 2, (width - w) // 2, h, w


def _crop(img, box, size, rng, data, blur_prob, noise):
    top, left, h, w = box
    src = img[top : top + h, left : left + w]
    out = cv2.resize(src, (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.random() < data.vflip_prob:
        out = cv2.flip(out, 0)
    if rng.random() < data.hflip_prob:
        out = cv2.flip(out, 1)
    if rng.random() < blur_prob:
        sigma = rng.uniform(*data.blur_sigma)
        k = 2 * int(data.blur_truncate * sigma + 0.5) + 1
        out = cv2.GaussianBlur(out, (k, k), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    if rng.random() < data.brightness_prob:
        out = out + np.float32(rng.uniform(-data.brightness_delta, data.brightness_delta))
    if rng.random() < data.noise_prob:
        if noise == "fresh":
            out = out + data.noise_std * rng.standard_normal(out.shape, dtype=np.float32)
        else:
            table, n = transforms.noise_table(), size * size
            start = int(rng.integers(0, len(table) - n + 1))
            out = out + np.float32(data.noise_std) * table[start : start + n].reshape(size, size)
    return out


def baseline_sample(blob: bytes, rng: np.random.Generator, data, noise: str = "fresh") -> dict:
    """Record bytes -> {"global": float32 [n_g, G, G, 1], "local": float32 [n_l, L, L, 1]}."""
    rec = records.decode(blob, ("image", "lesion_centers"))
    lo, hi = data.hu_window
    img = (np.clip(rec["image"], lo, hi).astype(np.float32) - lo) * (2.0 / (hi - lo)) - 1.0
    height, width = img.shape
    centers = rec["lesion_centers"]
    crops = []
    for k in range(data.n_global):
        box = _box(rng, height, width, data.global_scale, data.ratio)
        p = data.blur_probs[0] if k == 0 else data.blur_probs[1]
        crops.append(_crop(img, box, data.global_size, rng, data, p, noise))
    local = []
    for k in range(data.n_local_random + data.n_local_guided):
        top, left, h, w = _box(rng, height, width, data.local_scale, data.ratio)
        if k >= data.n_local_random and rec["has_calcium"] and len(centers):
            r, c = centers[rng.integers(len(centers))]
            reach = max(0.0, min(data.guided_offset_px, min(h, w) / 2 - 2))
            top = round(r + rng.uniform(-reach, reach) - h / 2)
            left = round(c + rng.uniform(-reach, reach) - w / 2)
            top, left = min(max(top, 0), height - h), min(max(left, 0), width - w)
        box = (top, left, h, w)
        local.append(_crop(img, box, data.local_size, rng, data, data.blur_probs[2], noise))
    return {"global": np.stack(crops)[..., None], "local": np.stack(local)[..., None]}


def time_baseline(blobs: list[bytes], data, seconds: float, noise: str) -> tuple[int, float, float]:
    """Runs `baseline_sample` over `blobs` for `seconds`: (samples, wall s, CPU s)."""
    cv2.setNumThreads(1)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        rng = np.random.Generator(np.random.Philox(n))
        baseline_sample(blobs[n % len(blobs)], rng, data, noise)
        n += 1
    return n, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str]) -> None:
    del argv
    data = common.data_config("dinolg")
    gen = np.random.default_rng(0)
    blobs = [
        records.encode(synthetic_records.synthetic_slice(gen, 512, num_lesions=k % 3))
        for k in range(16)
    ]
    noise = flags.FLAGS.noise
    n, wall, cpu = time_baseline(blobs, data, flags.FLAGS.seconds, noise)
    row = {"baseline": f"opencv_{noise}", "samples_per_s": round(n / wall, 1)}
    print(json.dumps({**row, "samples_per_cpu_s": round(n / cpu, 1), "samples": n}))


if __name__ == "__main__":  # flags only when run alone (bench_pipeline imports this)
    flags.DEFINE_float("seconds", 10.0, "Timed seconds.")
    flags.DEFINE_enum("noise", "fresh", ["fresh", "table"], "How noise is drawn.")
    app.run(main)
