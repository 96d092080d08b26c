"""Grain input pipelines over the ArrayRecord shards of a manifest.

Pretraining (`pretrain_dataset`)::

    ArrayRecord source -> seed -> shuffle -> repeat -> decode -> MultiCrop.plan (random_map)
      -> batch (local batch; MultiCrop.render writes the crops straight into the batch)
      -> this process's batches -> to_iter_dataset -> mp_prefetch

Determinism. Grain derives each element's generator from the seed and the element's
index in the shuffled, repeated stream, so a crop depends only on (seed, position). The
stream is cut into chunks of ``batch_size / process_count`` and process ``p`` takes
chunks ``p, p + P, ...``: global batch ``b`` is the concatenation of every process's
``b``-th batch, identical for any process count, and the processes read disjoint
elements that together cover each epoch. Multiprocess workers split the (already
batched) stream by whole batches and Grain interleaves them back in order, so the
batches do not depend on ``worker_count`` either. The iterator's ``get_state`` /
``set_state`` checkpoint the position (restore with the same worker count).

Pretraining batch (per process, B = batch_size / process_count), crops-major so a
training step can reshape one resolution to ``[n * B, ...]`` in one call::

    "global":      float32 [n_global, B, G, G, 1]  (``data.batch_dtype``: or uint16, see
                   crop_codec; a training step decodes it with ``crop_codec.decode``)
    "local":       float32 [n_local, B, L, L, 1]  (random crops first, guided last)
    "guided_mask": bool [n_local]     which local crops are guided (same every batch)
    "guided_hit":  bool [B, n_local]  guided crop centred on a lesion of that slice
    "has_calcium": bool [B]

Evaluation batches (`eval_dataset`, `labelled_dataset`): whole slices, normalised,
``image`` float32 [B, S, S, 1] with S the record size, or ``config.eval_size`` when set
(bilinear resize; labels then by nearest neighbour), ``labels`` uint8 [B, S, S],
``has_calcium`` bool [B], ``index`` int64 [B] (global record index in the split),
``study`` str [B], ``slice`` int32 [B], ``valid`` bool [B] (eval padding).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import cv2
import grain
import ml_collections
import numpy as np
from absl import flags

from dinolg_jax.data import crop_codec, records, transforms
from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data.multicrop import CropPlan, MultiCrop
from dinolg_jax.data.shards import NamedShardSource

_SOURCE = NamedShardSource  # Grain's ArrayRecord source; read errors name the shard


def _manifest(manifest: manifest_lib.Manifest | str | os.PathLike) -> manifest_lib.Manifest:
    if not isinstance(manifest, manifest_lib.Manifest):
        manifest = manifest_lib.load(manifest)
    version = manifest.data.get("record_version", records.VERSION)
    if version != records.VERSION:
        raise manifest_lib.ManifestError(
            f"{manifest.root}: records of version {version}, this code reads {records.VERSION}"
        )
    return manifest


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def _local_batch(batch_size: int, process_count: int) -> int:
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"global batch_size {batch_size} must be a positive multiple of the process "
            f"count {process_count}"
        )
    return batch_size // process_count


class DecodeRecord(grain.transforms.Map):
    """bytes -> record dict (`records.decode`; only the array `fields` given, default all)."""

    def __init__(self, fields: Sequence[str] | None = None):
        self.fields = None if fields is None else tuple(fields)

    def map(self, element: bytes) -> dict[str, Any]:
        return records.decode(element, self.fields)


# Set in Grain worker processes (`_worker_init`): batches are then stacked straight into
# shared memory, which Grain hands to the main process without another copy.
_IN_WORKER = False


def _worker_init(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    global _IN_WORKER
    _IN_WORKER = True
    cv2.setNumThreads(1)  # one core per worker: crops are too small for a thread pool


def _batch_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array, in shared memory inside a Grain worker."""
    if _IN_WORKER and math.prod(shape):
        try:  # Grain's own shared-memory array (private module; plain arrays if it moves)
            from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

            return SharedMemoryArray(shape, dtype)
        except (ImportError, OSError):
            pass
    return np.empty(shape, dtype)


class PlanCrops(grain.transforms.RandomMap):
    """Grain op: decoded record -> its `CropPlan` (`MultiCrop.plan`, the element's draws)."""

    def __init__(self, op: MultiCrop):
        self.op = op

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> CropPlan:
        return self.op.plan(element, rng)


class CropsMajorBatch:
    """Grain ``batch_fn``: renders `CropPlan` s into a crops-major batch (module docstring).

    The crops are written once, straight into the batch arrays (shared memory inside a
    Grain worker): no per-sample crop arrays, no stacking copy.
    """

    def __init__(self, op: MultiCrop, dtype: str = "float32"):
        self.op, self.dtype = op, crop_codec.check_dtype(dtype)

    def __call__(self, plans: Sequence[CropPlan]) -> dict[str, np.ndarray]:
        op, b = self.op, len(plans)
        g, loc = op.global_size, op.local_size
        out = {
            "global": _batch_array((op.n_global, b, g, g, 1), self.dtype),
            "local": _batch_array((op.n_local, b, loc, loc, 1), self.dtype),
            "guided_mask": op.guided_mask,
        }
        op.render(plans, out["global"], out["local"])
        for key in plans[0].fields:
            out[key] = np.stack([p.fields[key] for p in plans])
        return out


def _stack(elements: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


def _finish(ds: grain.MapDataset, data: ml_collections.ConfigDict) -> grain.IterDataset:
    """to_iter_dataset with the configured read threads, then worker processes if any."""
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=data.read_buffer_size)
    )
    if data.worker_count > 0:
        # Grain's worker processes read absl flags; outside an absl app (notebooks,
        # pytest) none were parsed, so take the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=data.worker_count, per_worker_buffer_size=data.worker_buffer_size
            ),
            worker_init_fn=_worker_init,
        )
    return it


def pretrain_indices(
    manifest: manifest_lib.Manifest | str | os.PathLike, split: str, positive_fraction: float
) -> np.ndarray | None:
    """One epoch of the pretraining stream as record indices, or None for "every slice once".

    With ``0 < f < 1``, every slice without calcium once and every calcified slice
    ``r = max(1, round(f / (1 - f) * n_neg / n_pos))`` times (sorted; the stream shuffles
    them), so calcified slices make about ``f`` of an epoch.
    """
    if positive_fraction <= 0:
        return None
    if positive_fraction >= 1:
        raise ValueError(f"pretrain_positive_fraction must be in [0, 1), got {positive_fraction}")
    m = _manifest(manifest)
    flags_ = _calcium_flags(tuple(m.shard_paths(split)))
    pos, neg = np.flatnonzero(flags_), np.flatnonzero(~flags_)
    if len(pos) == 0:
        raise ValueError(f"split {split!r} has no slice with calcium to oversample")
    reps = max(1, round(positive_fraction / (1 - positive_fraction) * len(neg) / len(pos)))
    return np.sort(np.concatenate([neg, np.repeat(pos, reps)]))


class _ReadRecord(grain.transforms.Map):
    """Record index -> its bytes (the source opened lazily, per worker)."""

    def __init__(self, paths: Sequence[str]):
        self.paths, self._source = list(paths), None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def map(self, index: int) -> bytes:
        if self._source is None:
            self._source = _SOURCE(self.paths)
        return self._source[int(index)]


def pretrain_dataset(
    manifest: manifest_lib.Manifest | str | os.PathLike,
    data: ml_collections.ConfigDict,
    *,
    split: str = "pretrain",
    process_index: int | None = None,
    process_count: int | None = None,
    debug: bool = False,
) -> grain.IterDataset:
    """The infinite, shuffled multi-crop batch stream of this process (module docstring).

    Args:
      manifest: a loaded manifest or the path of manifest.json.
      data: the ``config.data`` section (``configs/common.py:data_config``).
      split: manifest split to read.
      process_index, process_count: this process's place; default from jax.
      debug: add MultiCrop's ``boxes``, ``flips``, ``lesion``, ``blur_sigma``, ``study`` and
        ``slice`` to the batches (crop axis second, after the batch axis).

    Returns:
      A Grain IterDataset; ``iter()`` gives a checkpointable iterator of batches.
    """
    m = _manifest(manifest)
    index, count = _process(process_index, process_count)
    local = _local_batch(data.batch_size, count)
    op = MultiCrop.from_config(data, debug=debug)
    chosen = pretrain_indices(m, split, float(data.pretrain_positive_fraction))
    if chosen is None:
        ds = grain.MapDataset.source(_SOURCE(m.shard_paths(split))).seed(data.seed)
    else:
        ds = grain.MapDataset.source(chosen).seed(data.seed)
    if data.shuffle:
        ds = ds.shuffle()
    ds = ds.repeat()
    if chosen is not None:
        ds = ds.map(_ReadRecord(m.shard_paths(split)))
    ds = ds.map(DecodeRecord(MultiCrop.RECORD_FIELDS)).random_map(PlanCrops(op))
    batch_fn = CropsMajorBatch(op, data.batch_dtype)
    ds = ds.batch(local, drop_remainder=True, batch_fn=batch_fn)
    return _finish(ds[index::count], data)


# ------------------------------------------------------------------ whole-slice datasets


class SliceExample(grain.transforms.Map):
    """Record index (-1: padding) -> a whole, normalised slice (module docstring)."""

    def __init__(self, paths: Sequence[str], hu_window: Sequence[float], size: int, shape: tuple):
        self.paths, self.hu_window = list(paths), tuple(hu_window)
        self.size, self.shape = int(size), tuple(shape)
        self._source = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def map(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            rec = {
                "image": np.zeros(self.shape, np.int16),
                "labels": np.zeros(self.shape, np.uint8),
                "has_calcium": False,
                "study": "",
                "slice": -1,
            }
        else:
            if self._source is None:
                self._source = _SOURCE(self.paths)
            rec = records.decode(self._source[index])
        image = transforms.normalize_hu(rec["image"], self.hu_window)
        labels = np.asarray(rec["labels"])
        if image.shape != self.shape:
            raise ValueError(f"record {index} has shape {image.shape}, split has {self.shape}")
        if self.size and image.shape != (self.size, self.size):
            height, width = image.shape
            image = transforms.resized_crops(image, [(0, 0, height, width)], self.size)[0]
            rows = ((np.arange(self.size) + 0.5) * height / self.size).astype(np.intp)
            cols = ((np.arange(self.size) + 0.5) * width / self.size).astype(np.intp)
            labels = labels[rows][:, cols]
        return {
            "image": image[..., None],
            "labels": np.ascontiguousarray(labels, dtype=np.uint8),
            "has_calcium": np.bool_(rec["has_calcium"]),
            "index": np.int64(index),
            "study": str(rec["study"]),
            "slice": np.int32(rec["slice"]),
            "valid": np.bool_(index >= 0),
        }


class LabelPreservingAugment(grain.transforms.RandomMap):
    """Flips (image and labels), brightness and noise for probe / U-Net training."""

    def __init__(self, data: ml_collections.ConfigDict):
        self.flip = transforms.RandomFlip(data.hflip_prob, data.vflip_prob)
        self.brightness = transforms.RandomBrightness(data.brightness_prob, data.brightness_delta)
        self.noise = transforms.GaussianNoise(data.noise_prob, data.noise_std)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        out = {**element, "image": element["image"][..., 0]}
        for op in (self.flip, self.brightness, self.noise):
            out = op.random_map(out, rng)
        return {**out, "image": out["image"][..., None]}


def _first_shape(paths: Sequence[str]) -> tuple[int, int]:
    return tuple(records.decode(_SOURCE(paths)[0])["image"].shape)


def eval_dataset(
    manifest: manifest_lib.Manifest | str | os.PathLike,
    split: str,
    data: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Every slice of `split` once, in record order (studies contiguous, z-ascending).

    No augmentation. Global batch ``b`` holds records ``b * batch_size ...``; each process
    gets its contiguous part of it. The last batch is padded (``valid`` False, ``index``
    -1) so every process yields the same number of full batches. Regroup results by
    ``study`` / ``slice`` (or ``index`` with `Manifest.study_range`).
    """
    m = _manifest(manifest)
    index, count = _process(process_index, process_count)
    local = _local_batch(data.batch_size, count)
    paths = m.shard_paths(split)
    n = m.num_records(split)
    if n == 0:
        raise ValueError(f"split {split!r} has no records")
    total = -(-n // data.batch_size) * data.batch_size
    order = np.where(np.arange(total) < n, np.arange(total), -1)
    op = SliceExample(paths, data.hu_window, data.eval_size, _first_shape(paths))
    ds = grain.MapDataset.source(order).map(op).batch(local, batch_fn=_stack)
    return _finish(ds[index::count], data)


@functools.cache
def _calcium_flags(paths: tuple[str, ...]) -> np.ndarray:
    """bool [N]: has_calcium of every record (one pass over the split, cached)."""
    source = _SOURCE(list(paths))
    flags = np.zeros(len(source), dtype=bool)
    step = 256
    for lo in range(0, len(source), step):
        chunk = source.__getitems__(list(range(lo, min(lo + step, len(source)))))
        flags[lo : lo + len(chunk)] = [bool(records.decode(r)["has_calcium"]) for r in chunk]
    return flags


def labelled_indices(
    manifest: manifest_lib.Manifest | str | os.PathLike,
    split: str,
    positive_fraction: float,
    seed: int,
    epoch: int = 0,
) -> np.ndarray:
    """Record indices of one epoch of probe / U-Net / ceiling training, sorted.

    Every slice with calcium, plus ``round(P * (1 - f) / f)`` slices without (at most all
    of them) drawn with ``(seed, epoch)``: a new draw of negatives each epoch, the same
    for the same seed and epoch. ``positive_fraction <= 0`` keeps every slice.
    """
    flags = _calcium_flags(tuple(_manifest(manifest).shard_paths(split)))
    return _LabelledDraw(flags, positive_fraction, seed, split=split).epoch(epoch, False)


class _LabelledDraw:
    """The epochs of a labelled stream: all positives and a fresh draw of negatives each
    epoch (:meth:`epoch`), in a seeded order of their own when ``shuffle``; the same
    length (``size``) every epoch. Called with a stream position ``i`` it returns the
    record there (epoch ``i // size``), so a Grain iterator's position fixes the rest.
    Raises ValueError for a fraction above 1 or a split with no calcified slice."""

    def __init__(
        self,
        flags: np.ndarray,
        positive_fraction: float,
        seed: int,
        *,
        shuffle: bool = False,
        split: str = "",
    ) -> None:
        if positive_fraction > 1:
            raise ValueError(f"positive_fraction must be in (0, 1], got {positive_fraction}")
        self.all = positive_fraction <= 0
        self.pos, self.neg = np.flatnonzero(flags), np.flatnonzero(~flags)
        if not self.all and len(self.pos) == 0:
            raise ValueError(f"split {split!r} has no slice with calcium")
        self.n_neg = min(
            len(self.neg),
            0 if self.all else round(len(self.pos) * (1 - positive_fraction) / positive_fraction),
        )
        self.seed = int(seed)
        self.size = len(flags) if self.all else len(self.pos) + self.n_neg
        self.shuffle = shuffle

    def _rng(self, epoch: int, purpose: int) -> np.random.Generator:
        return np.random.Generator(
            np.random.Philox(np.random.SeedSequence((self.seed, epoch, purpose)))
        )

    @functools.lru_cache(maxsize=4)  # noqa: B019 (a few epochs of one dataset's draw)
    def epoch(self, epoch: int, shuffle: bool) -> np.ndarray:
        """int64 [size]: the record indices of ``epoch`` (sorted unless ``shuffle``)."""
        if self.all:
            chosen = np.arange(self.size)
        else:
            pick = self._rng(epoch, 0).choice(len(self.neg), size=self.n_neg, replace=False)
            chosen = np.sort(np.concatenate([self.pos, self.neg[pick]]))
        return self._rng(epoch, 1).permutation(chosen) if shuffle else chosen

    def __call__(self, position: int, _: Any = None) -> int:
        """The record at stream position ``position`` (Grain's ``map_with_index``)."""
        epoch, j = divmod(int(position), self.size)
        return int(self.epoch(epoch, self.shuffle)[j])


def labelled_dataset(
    manifest: manifest_lib.Manifest | str | os.PathLike,
    split: str,
    data: ml_collections.ConfigDict,
    *,
    positive_fraction: float | None = None,
    num_epochs: int | None = None,
    augment: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Shuffled whole slices with labels for probe and U-Net training.

    Args:
      manifest, split, data: as `pretrain_dataset`.
      positive_fraction: share of slices with calcium (`labelled_indices`); default
        ``data.positive_fraction``.
      num_epochs: passes over the selection (None: forever).
      augment: apply `LabelPreservingAugment` (flips, brightness, noise).
      process_index, process_count: as `pretrain_dataset` (same chunking).

    Returns:
      A Grain IterDataset of full batches (module docstring; ``valid`` all True).
    """
    m = _manifest(manifest)
    index, count = _process(process_index, process_count)
    local = _local_batch(data.batch_size, count)
    frac = data.positive_fraction if positive_fraction is None else positive_fraction
    paths = m.shard_paths(split)
    flags = _calcium_flags(tuple(paths))
    draw = _LabelledDraw(flags, frac, data.seed, shuffle=bool(data.shuffle), split=split)
    op = SliceExample(paths, data.hu_window, data.eval_size, _first_shape(paths))
    ds = grain.MapDataset.range(draw.size).seed(data.seed).repeat(num_epochs)
    ds = ds.map_with_index(draw)
    ds = ds.map(op)
    if augment:
        ds = ds.random_map(LabelPreservingAugment(data))
    ds = ds.batch(local, drop_remainder=True, batch_fn=_stack)
    return _finish(ds[index::count], data)


# ----------------------------------------------------------------------- device transfer

_CROP_MAJOR = ("global", "local")


def device_put_batch(
    batch: dict[str, np.ndarray], mesh: Any, data_axis: str | tuple[str, ...] = "data"
) -> dict[str, Any]:
    """Puts a host batch on `mesh`, the batch dimension sharded over `data_axis`.

    `data_axis` may name several mesh axes (e.g. ``("data", "fsdp")``).

    The batch axis is axis 1 of ``global`` / ``local`` and axis 0 of every other array;
    ``guided_mask`` is replicated. Each process passes its own part
    (``runtime.mesh.put_batch``). String fields stay host numpy arrays.

    Returns:
      dict of `jax.Array` (plus host string arrays), same keys.
    """
    from dinolg_jax.runtime import mesh as mesh_lib

    dims = {key: 1 for key in _CROP_MAJOR} | {"guided_mask": None}
    return mesh_lib.put_batch(batch, mesh, batch_dims=dims, axes=data_axis)
