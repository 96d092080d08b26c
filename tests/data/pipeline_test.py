"""Grain pipelines: worker- and process-count invariance, resume, eval order, sharding."""

import cv2
import numpy as np
import pytest

from configs import common
from dinolg_jax.data import crop_codec, pipeline, records, transforms
from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data.multicrop import MultiCrop
from dinolg_jax.phantom import synthetic_records


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 4 studies x 6 slices = 24 records of 32 x 32 in 2 shards; 8 slices with calcium.
    path = synthetic_records.write_dataset(tmp_path_factory.mktemp("data"), size=32)
    return manifest_lib.load(path)


def _config(**kw):
    data = common.data_config("dinolg")
    data.global_size, data.local_size = 16, 8
    data.n_local_random, data.n_local_guided = 2, 2
    data.batch_size = 4
    data.read_threads = 0
    data.update(kw)
    return data


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.slow
def test_same_batches_for_0_1_4_workers(dataset):
    runs = []
    for workers in (0, 1, 4):
        data = _config(worker_count=workers, worker_buffer_size=1)
        it = iter(pipeline.pretrain_dataset(dataset, data, process_index=0, process_count=1))
        runs.append(_take(it, 3))
        if hasattr(it, "close"):
            it.close()
    _assert_same(runs[0], runs[1])
    _assert_same(runs[0], runs[2])
    batch = runs[0][0]
    assert batch["global"].shape == (2, 4, 16, 16, 1)
    assert batch["local"].shape == (4, 4, 8, 8, 1)
    assert batch["guided_mask"].tolist() == [False, False, True, True]
    assert batch["guided_hit"].shape == (4, 4) and batch["has_calcium"].shape == (4,)
    # Guided hits exactly on the slices with calcium, and only in guided slots.
    np.testing.assert_array_equal(batch["guided_hit"][:, 2], batch["has_calcium"])
    assert not batch["guided_hit"][:, :2].any()
    assert not np.array_equal(runs[0][0]["local"], runs[0][1]["local"])


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_from_iterator_state(dataset, workers):
    data = _config(worker_count=workers, worker_buffer_size=1)
    ds = pipeline.pretrain_dataset(dataset, data, process_index=0, process_count=1)
    it = iter(ds)
    _take(it, 2)
    state = it.get_state()
    expected = _take(it, 3)
    fresh = iter(ds)
    fresh.set_state(state)
    _assert_same(_take(fresh, 3), expected)
    for i in (it, fresh):
        if hasattr(i, "close"):
            i.close()


def test_processes_read_disjoint_parts_that_cover_the_epoch(dataset):
    data = _config(batch_size=4, shuffle=True)
    epoch = dataset.num_records("pretrain") // data.batch_size  # 6 global batches
    single = _take(
        iter(
            pipeline.pretrain_dataset(dataset, data, process_index=0, process_count=1, debug=True)
        ),
        epoch,
    )
    parts = [
        _take(
            iter(
                pipeline.pretrain_dataset(
                    dataset, data, process_index=p, process_count=2, debug=True
                )
            ),
            epoch,
        )
        for p in (0, 1)
    ]
    seen = [
        {(s, int(i)) for b in part for s, i in zip(b["study"], b["slice"], strict=True)}
        for part in parts
    ]
    assert not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1]) == 12
    everything = {(f"synthetic-{s:04d}", j) for s in range(4) for j in range(6)}
    assert seen[0] | seen[1] == everything
    # Global batch b is the concatenation of the processes' b-th batches.
    for b in range(epoch):
        for key in ("global", "local"):
            joined = np.concatenate([parts[0][b][key], parts[1][b][key]], axis=1)
            np.testing.assert_array_equal(joined, single[b][key])
        joined = np.concatenate([parts[0][b]["boxes"], parts[1][b]["boxes"]])
        np.testing.assert_array_equal(joined, single[b]["boxes"])
    with pytest.raises(ValueError, match="multiple of the process count"):
        pipeline.pretrain_dataset(dataset, _config(batch_size=3), process_index=0, process_count=2)


def test_eval_dataset_every_slice_in_order_with_padding(dataset):
    data = _config(batch_size=10)
    parts = [
        list(pipeline.eval_dataset(dataset, "val", data, process_index=p, process_count=2))
        for p in (0, 1)
    ]
    assert [len(p) for p in parts] == [3, 3]  # 24 slices -> 3 global batches of 10
    batches = [b for pair in zip(*parts, strict=True) for b in pair]  # global order
    index = np.concatenate([b["index"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    np.testing.assert_array_equal(index[valid], np.arange(24))
    assert valid.sum() == 24 and not valid[24:].any() and (index[24:] == -1).all()
    study = np.concatenate([b["study"] for b in batches])[valid]
    slices = np.concatenate([b["slice"] for b in batches])[valid]
    for sid in dataset.studies_in("val"):
        rng = dataset.study_range(sid, "val")
        assert (study[rng.start : rng.stop] == sid).all()
        np.testing.assert_array_equal(slices[rng.start : rng.stop], np.arange(6))
    # Image and labels are the record's, normalised, unaugmented.
    source = pipeline._SOURCE(dataset.shard_paths("val"))
    rec = records.decode(source[13])
    first = parts[0][1]  # global batch 1, process 0 -> records 10..14
    np.testing.assert_array_equal(first["image"][3, ..., 0], transforms.normalize_hu(rec["image"]))
    np.testing.assert_array_equal(first["labels"][3], rec["labels"])
    # Resized evaluation keeps labels by nearest neighbour.
    small = next(
        iter(
            pipeline.eval_dataset(
                dataset, "val", _config(eval_size=16), process_index=0, process_count=1
            )
        )
    )
    assert small["image"].shape == (4, 16, 16, 1) and small["labels"].shape == (4, 16, 16)


def test_labelled_dataset_fraction_and_determinism(dataset):
    data = _config(batch_size=4)
    idx = pipeline.labelled_indices(dataset, "train", 0.5, seed=0)
    assert len(idx) == 16  # 8 positives + 8 of the 16 negatives
    assert (pipeline.labelled_indices(dataset, "train", 0.5, seed=0) == idx).all()
    assert len(pipeline.labelled_indices(dataset, "train", 0.0, seed=0)) == 24
    assert len(pipeline.labelled_indices(dataset, "train", 0.2, seed=0)) == 24  # all negatives
    runs = [
        list(
            pipeline.labelled_dataset(
                dataset, "train", data, num_epochs=1, augment=True, process_index=0, process_count=1
            )
        )
        for _ in range(2)
    ]
    _assert_same(runs[0], runs[1])
    batches = runs[0]
    assert len(batches) == 4
    seen = np.sort(np.concatenate([b["index"] for b in batches]))
    np.testing.assert_array_equal(seen, idx)
    assert np.concatenate([b["has_calcium"] for b in batches]).sum() == 8
    for b in batches:
        # Flips move image and labels together: lesion pixels stay bright.
        lesion = b["labels"] > 0
        assert (b["image"][..., 0][lesion] > transforms.normalize_hu(np.int16(300))).all()
        np.testing.assert_array_equal(lesion.any(axis=(1, 2)), b["has_calcium"])


def test_device_put_batch_shards_the_batch_axis(dataset):
    import jax
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((8,), ("data",))
    data = _config(batch_size=8)
    batch = next(iter(pipeline.pretrain_dataset(dataset, data, process_index=0, process_count=1)))
    out = pipeline.device_put_batch(batch, mesh)
    assert out["global"].sharding.spec == P(None, "data")
    assert out["guided_hit"].sharding.spec == P("data")
    assert out["guided_mask"].sharding.is_fully_replicated
    for key in batch:
        np.testing.assert_array_equal(np.asarray(out[key]), batch[key])
    shard = out["local"].addressable_shards[3]
    np.testing.assert_array_equal(np.asarray(shard.data), batch["local"][:, 3:4])


def test_pretraining_decodes_only_the_fields_multicrop_reads(dataset):
    source = pipeline._SOURCE(dataset.shard_paths("pretrain"))
    full = records.decode(source[2])
    part = pipeline.DecodeRecord(MultiCrop.RECORD_FIELDS).map(source[2])
    arrays = {k for k, v in full.items() if isinstance(v, np.ndarray)}
    assert {k for k, v in part.items() if isinstance(v, np.ndarray)} == {"image", "lesion_centers"}
    assert arrays == set(records.ARRAY_FIELDS)
    for key in part:
        np.testing.assert_array_equal(part[key], full[key])
    assert part.keys() | (set(records.ARRAY_FIELDS) - {"image", "lesion_centers"}) == full.keys()
    # MultiCrop gives the same crops from the partial record.
    op = MultiCrop(global_size=16, local_size=8, n_local_random=2, n_local_guided=2)
    gen = np.random.Generator(np.random.Philox(5))
    a = op.random_map(full, gen)
    b = op.random_map(part, np.random.Generator(np.random.Philox(5)))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(records.RecordError, match="unknown array fields"):
        records.decode(source[2], fields=("image", "nope"))


def test_decode_views_or_copies_arrays_by_alignment():
    rec = synthetic_records.synthetic_slice(np.random.default_rng(0), 16, num_lesions=1)
    seen = set()
    for name_len in range(1, 9):  # the JSON header length moves the payload offset
        data = records.encode({**rec, "study": "s" * name_len})
        out = records.decode(data, fields=("image", "pixel_mm"))
        for key in ("image", "pixel_mm"):
            assert out[key].flags.aligned
            np.testing.assert_array_equal(out[key], rec[key])
        # The image is the first payload: a view of `data` when 2-byte aligned there.
        start = records._PREFIX.size + records._PREFIX.unpack_from(data)[2]
        raw = np.frombuffer(data, np.uint8)
        aligned = (raw.ctypes.data + start) % 2 == 0
        assert np.shares_memory(out["image"], raw) == aligned
        seen.add(aligned)
    assert seen == {True, False}


def test_uint16_batches_are_the_float32_batches_to_half_a_step(dataset):
    runs = {}
    for dtype, workers in (("float32", 0), ("uint16", 0), ("uint16", 1)):
        data = _config(batch_dtype=dtype, worker_count=workers, worker_buffer_size=1)
        it = iter(pipeline.pretrain_dataset(dataset, data, process_index=0, process_count=1))
        runs[dtype, workers] = _take(it, 2)
        if hasattr(it, "close"):
            it.close()
    _assert_same(runs["uint16", 0], runs["uint16", 1])  # worker count still does not matter
    for f32, u16 in zip(runs["float32", 0], runs["uint16", 0], strict=True):
        assert f32.keys() == u16.keys()
        for key in f32:
            if key in crop_codec.CROP_KEYS:
                assert u16[key].dtype == np.uint16 and u16[key].shape == f32[key].shape
                err = np.abs(crop_codec.decode(u16[key]) - f32[key]).max()
                assert err <= crop_codec.UINT16_STEP / 2 + 1e-6, key
            else:
                np.testing.assert_array_equal(u16[key], f32[key], err_msg=key)


def test_worker_init_makes_opencv_single_threaded():
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        pipeline._worker_init(0, 1)
        assert cv2.getNumThreads() == 1
    finally:
        pipeline._IN_WORKER = False
        cv2.setNumThreads(before)


def test_labelled_negatives_are_drawn_afresh_each_epoch_and_repeat_for_a_seed(dataset):
    # The train split: 8 calcified and 16 plain slices; at fraction 0.5 an epoch holds all
    # 8 positives and 8 of the 16 negatives, drawn from (seed, epoch).
    epochs = [pipeline.labelled_indices(dataset, "train", 0.5, seed=0, epoch=e) for e in range(4)]
    pos = pipeline.labelled_indices(dataset, "train", 1.0, seed=0)  # fraction 1: no negatives
    assert len(pos) == 8
    for e in epochs:
        assert len(e) == 16 and (np.diff(e) > 0).all() and np.isin(pos, e).all()
    negatives = [np.setdiff1d(e, pos) for e in epochs]
    assert len({tuple(n) for n in negatives}) == 4  # every epoch its own negatives
    # over 4 epochs more than the 8 of one draw are seen (P(all equal) = 0 here)
    assert len(np.unique(np.concatenate(negatives))) > 8
    again = pipeline.labelled_indices(dataset, "train", 0.5, seed=0, epoch=2)
    np.testing.assert_array_equal(again, epochs[2])
    other = pipeline.labelled_indices(dataset, "train", 0.5, seed=1, epoch=2)
    assert not np.array_equal(other, epochs[2])
    # the stream: epoch e of labelled_dataset holds exactly labelled_indices(..., epoch=e)
    data = _config(batch_size=4)
    stream = pipeline.labelled_dataset(
        dataset, "train", data, num_epochs=3, process_index=0, process_count=1
    )
    seen = np.concatenate([b["index"] for b in stream])
    assert len(seen) == 48
    for e in range(3):
        np.testing.assert_array_equal(np.sort(seen[16 * e : 16 * (e + 1)]), epochs[e])
