"""Synthetic CT-like slice records, shards and a manifest, for pipeline tests and benchmarks.

Not a phantom of the heart (that is `coca_release.py`): an ellipse of soft tissue in air
with two darker "lungs", noise, and a few bright calcium blobs whose centres are the
records' ``lesion_centers``. Enough to exercise decoding, cropping and guidance at any
size with known lesion positions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import records
from dinolg_jax.data import shards as shards_lib


def synthetic_slice(
    rng: np.random.Generator,
    size: int,
    *,
    study: str = "synthetic-0000",
    slice_index: int = 0,
    num_slices: int = 1,
    num_lesions: int = 0,
    lesion_radius: float = 2.5,
) -> dict[str, Any]:
    """One record dict (records.py schema) of a `size` x `size` slice.

    Lesions: discs of 400-900 HU, label 1-4, away from the border by 3 radii.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    body = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.47 * size)) ** 2 <= 1
    lung_x = (np.abs(xx - c) - 0.2 * size) / (0.12 * size)
    lung = ((yy - c) / (0.25 * size)) ** 2 + lung_x**2 <= 1
    hu = np.full((size, size), -1000.0, np.float32)
    hu[body] = 40.0
    hu[lung] = -850.0
    hu += rng.normal(0.0, 15.0, hu.shape).astype(np.float32)
    labels = np.zeros((size, size), np.uint8)
    margin = 3 * lesion_radius
    centers = rng.uniform(margin, size - 1 - margin, size=(num_lesions, 2)).astype(np.float32)
    vessels = rng.integers(1, 5, size=num_lesions).astype(np.uint8)
    for (r, col), v in zip(centers, vessels, strict=True):
        disc = (yy - r) ** 2 + (xx - col) ** 2 <= lesion_radius**2
        hu[disc] = rng.uniform(400, 900)
        labels[disc] = v
    # Report the centroid of each drawn disc (as the converter does), not the draw.
    for k in range(num_lesions):
        disc = (yy - centers[k, 0]) ** 2 + (xx - centers[k, 1]) ** 2 <= lesion_radius**2
        centers[k] = (yy[disc].mean(), xx[disc].mean())
    return {
        "image": np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        "labels": labels,
        "study": study,
        "slice": slice_index,
        "num_slices": num_slices,
        "z_mm": 3.0 * slice_index,
        "pixel_mm": np.array([0.7, 0.7], np.float32),
        "slice_thickness_mm": 3.0,
        "lesion_centers": centers.reshape(-1, 2),
        "lesion_vessels": vessels,
        "has_calcium": bool(num_lesions),
        "kind": "gated",
        "kvp": 120.0,
        "position_mm": np.array([-0.35 * size, -0.35 * size, 3.0 * slice_index]),
        "orientation": np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        "lossy_compression": False,
    }


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    size: int = 64,
    studies: int = 4,
    slices_per_study: int = 6,
    positive_every: int = 3,
    shards: int = 2,
    splits: Sequence[str] = ("pretrain", "train", "val", "test"),
    seed: int = 0,
    writer_options: str = "group_size:1",
    distinct: int | None = None,
) -> Path:
    """Writes ArrayRecord shards and manifest.json; every split holds the same studies.

    Slice ``j`` of a study has ``1 + j % 3`` lesions when ``j % positive_every == 0``
    (for the drawn images; reused ones keep theirs).
    `writer_options`: ArrayRecord options (the converter's default: zstd-compressed
    chunks of one record). `distinct`: draw only this many different images and reuse
    them cyclically (fast to write many real-size records for benchmarks).

    Returns:
      The manifest path.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(seed))
    blobs, entries, positives = [], {}, 0
    for s in range(studies):
        sid = f"synthetic-{s:04d}"
        entries[sid] = {"kind": "gated", "split": "train", "num_slices": slices_per_study}
        for j in range(slices_per_study):
            n = len(blobs)
            if distinct and n >= distinct:
                rec = records.decode(blobs[n % distinct])
                rec = {**rec, "study": sid, "slice": j, "num_slices": slices_per_study}
            else:
                k = 1 + j % 3 if j % positive_every == 0 else 0
                rec = synthetic_slice(
                    rng, size, study=sid, slice_index=j, num_slices=slices_per_study, num_lesions=k
                )
            positives += rec["has_calcium"]
            blobs.append(records.encode(rec))
    bounds = np.linspace(0, len(blobs), shards + 1).astype(int)
    split_data = {}
    for split in splits:
        shard_list = []
        for i in range(shards):
            name = f"{split}-{i:05d}-of-{shards:05d}.array_record"
            writer = ArrayRecordWriter(str(out / name), writer_options)
            for blob in blobs[bounds[i] : bounds[i + 1]]:
                writer.write(blob)
            writer.close()
            shard_list.append({"path": name, **shards_lib.describe(out / name)})
        split_data[split] = {
            "shards": shard_list,
            "num_records": len(blobs),
            "num_studies": studies,
            "num_positive": positives,
        }
    for s, sid in enumerate(entries):
        entries[sid]["records"] = {split: s * slices_per_study for split in splits}
    path = out / "manifest.json"
    manifest_lib.save(
        {"record_version": records.VERSION, "seed": seed, "splits": split_data, "studies": entries},
        path,
    )
    return path
