"""data.dataset_writer, the engine of both converters: cache framing, the shard plan (hand
counted), shards read back through ArrayRecord, the disk-full estimate, the printed tail,
and the folder's life cycle (old index gone at start, manifest last, cache removed, a full
disk one error, a second writer refused) checked on the files it leaves."""

import errno
import json
import os
import struct
from pathlib import Path

import grain
import numpy as np
import pytest

from dinolg_jax.data import dataset_writer, manifest, records, shards
from dinolg_jax.phantom import synthetic_records
from dinolg_jax.runtime.folder_lock import FolderLock


def _cache(cache_dir: Path, sid: str, n: int) -> None:
    """A per-study cache of `n` records b"<sid>:<i>" and its summary."""
    blobs = [f"{sid}:{i}".encode() for i in range(n)]
    (cache_dir / f"{sid}.records").write_bytes(dataset_writer.frame(blobs))
    (cache_dir / f"{sid}.json").write_text(json.dumps({"study_id": sid, "num_slices": n}))


def test_frame_is_length_prefixed_and_read_cached_returns_the_asked_records(tmp_path):
    data = dataset_writer.frame([b"ab", b"", b"cde"])
    assert (
        data == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 3) + b"cde"
    )
    path = tmp_path / "s.records"
    path.write_bytes(data)
    assert list(dataset_writer.read_cached(path, 1, 2)) == [b"", b"cde"]
    with pytest.raises(dataset_writer.ConvertError, match=r"s\.records holds fewer than 4"):
        list(dataset_writer.read_cached(path, 0, 4))
    path.write_bytes(data[:-1])
    with pytest.raises(dataset_writer.ConvertError, match=r"s\.records is truncated"):
        list(dataset_writer.read_cached(path, 2, 1))


def test_a_study_cache_round_trips_and_is_reused_only_for_its_fingerprint(tmp_path):
    rng = np.random.default_rng(0)
    recs = [
        synthetic_records.synthetic_slice(rng, 16, slice_index=i, num_slices=3, num_lesions=n)
        for i, n in enumerate((0, 2, 1))
    ]
    blobs, positive = dataset_writer.encode_records(recs)
    assert positive == 2  # the slices with lesions, counted by hand
    summary = {"study_id": "s", "num_slices": 3, "fingerprint": "f1", "b": 1, "a": 2}
    dataset_writer.save_study(tmp_path, summary, blobs)
    assert (tmp_path / "s.json").read_text() == json.dumps(summary, sort_keys=True)
    back = list(dataset_writer.read_cached(tmp_path / "s.records", 0, 3))
    for rec, blob in zip(recs, back, strict=True):
        got = records.decode(blob)
        np.testing.assert_array_equal(got["image"], rec["image"])
        np.testing.assert_array_equal(got["labels"], rec["labels"])
        assert got["slice"] == rec["slice"]
    assert dataset_writer.cached_summary(tmp_path, "s", "f1") == summary
    assert dataset_writer.cached_summary(tmp_path, "s", "f2") is None  # inputs changed
    (tmp_path / "s.records").unlink()
    assert dataset_writer.cached_summary(tmp_path, "s", "f1") is None  # records gone


def test_plan_split_cuts_records_into_near_equal_contiguous_shards(tmp_path):
    studies = [{"study_id": "a", "num_slices": 4}, {"study_id": "b", "num_slices": 3}]
    plan, starts = dataset_writer.plan_split(tmp_path, "train", studies, tmp_path / "c", 3)
    # 7 records in 3 shards: bounds 0, 2, 4, 7 (7 * i // 3).
    a, b = str(tmp_path / "c" / "a.records"), str(tmp_path / "c" / "b.records")
    assert starts == {"a": 0, "b": 4}
    assert plan == [
        (str(tmp_path / "train-00000-of-00003.array_record"), [(a, 0, 2)]),
        (str(tmp_path / "train-00001-of-00003.array_record"), [(a, 2, 2)]),
        (str(tmp_path / "train-00002-of-00003.array_record"), [(b, 0, 3)]),
    ]
    few, _ = dataset_writer.plan_split(tmp_path, "val", studies[1:], tmp_path / "c", 8)
    assert [Path(p).name for p, _ in few] == [
        f"val-0000{i}-of-00003.array_record" for i in range(3)
    ]
    assert dataset_writer.plan_split(tmp_path, "test", [], tmp_path, 4) == ([], {})


def test_write_shard_holds_the_segments_records_and_describes_itself(tmp_path):
    _cache(tmp_path, "a", 4)
    _cache(tmp_path, "b", 3)
    path = tmp_path / "x-00000-of-00001.array_record"
    segments = [(str(tmp_path / "a.records"), 1, 3), (str(tmp_path / "b.records"), 0, 2)]
    info = dataset_writer.write_shard(path, segments)
    source = grain.sources.ArrayRecordDataSource([str(path)])
    assert [source[i] for i in range(len(source))] == [b"a:1", b"a:2", b"a:3", b"b:0", b"b:1"]
    assert info == {
        "num_records": 5,
        "bytes": path.stat().st_size,
        "sha256": shards.sha256_file(path),
    }
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_shard_bytes_estimate_is_the_cache_records_pro_rata(tmp_path):
    cache = tmp_path / "gated-0001.records"
    cache.write_bytes(b"x" * 1000)
    (tmp_path / "gated-0001.json").write_text(json.dumps({"num_slices": 10}))
    tasks = [("a", [(str(cache), 0, 4)]), ("b", [(str(cache), 4, 6)])]
    assert dataset_writer.shard_bytes(tasks) == 1000
    assert dataset_writer.shard_bytes(tasks[:1]) == 400
    assert dataset_writer.shard_bytes([("c", [(str(tmp_path / "gone.records"), 0, 3)])]) == 0


def test_format_tail_prints_the_timings_then_each_warning():
    report = {
        "warnings": ["split 'val' is empty"],
        "timings": {"total_s": 2.25, "load_s": 1.5, "write_s": 0.75, "slices": 9,
                    "slices_per_s": 4.0, "workers": 2},
    }  # fmt: skip
    assert dataset_writer.format_tail(report) == [
        "time: 2.2 s (1.5 s loading, 0.8 s writing), 9 slices, 4.0 slices/s, 2 worker(s)",
        "WARNING: split 'val' is empty",
    ]
    assert dataset_writer.format_tail({"warnings": []}) == []


def _prepare(task: tuple[str, str, int]) -> dict:
    """A converter's per-study step: a cache of `n` records."""
    cache_dir, sid, n = task
    _cache(Path(cache_dir), sid, n)
    return {"study_id": sid, "num_slices": n, "positive": n - 1}


def _convert(out: Path, studies: dict[str, int], **kwargs) -> dict:
    with dataset_writer.DatasetWriter(out, progress=False, **kwargs) as w:
        assert not (out / "manifest.json").exists() and not (out / "report.json").exists()
        tasks = [(str(out / "cache"), sid, n) for sid, n in studies.items()]
        summaries = w.prepare(_prepare, tasks, lambda: 5e6)
        members = {k: summaries if k == "pretrain" else [] for k in manifest.SPLITS}
        splits, starts = w.write_splits(members, "positive")
        index = {"record_version": 2, "seed": 0, "splits": splits, "studies": starts}
        return w.finish({"warnings": []}, index, sum(studies.values()))


def test_the_writer_leaves_shards_report_and_manifest_and_removes_the_rest(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # an earlier run's index
    (out / "pretrain-00000-of-00009.array_record").write_bytes(b"old")
    (out / ".report.json.1.tmp").write_bytes(b"left by a killed run")
    report = _convert(out, {"s1": 3, "s2": 2}, shards_per_split=2)
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "manifest.json", "pretrain-00000-of-00002.array_record",
        "pretrain-00001-of-00002.array_record", "report.json",
    ]  # fmt: skip
    assert json.loads((out / "report.json").read_text()) == report
    assert set(report["timings"]) == {
        "load_s", "write_s", "total_s", "slices", "slices_per_s", "workers",
    }  # fmt: skip
    assert report["timings"]["slices"] == 5 and report["timings"]["workers"] == 1
    saved = json.loads((out / "manifest.json").read_text())
    pre = saved["splits"]["pretrain"]
    assert (pre["num_records"], pre["num_studies"], pre["num_positive"]) == (5, 2, 3)
    assert [sh["num_records"] for sh in pre["shards"]] == [2, 3]  # bounds 0, 2, 5
    assert saved["studies"]["pretrain"] == {"s1": 0, "s2": 3}
    source = grain.sources.ArrayRecordDataSource([str(out / sh["path"]) for sh in pre["shards"]])
    assert [source[i] for i in range(5)] == [b"s1:0", b"s1:1", b"s1:2", b"s2:0", b"s2:1"]


def test_a_full_disk_is_one_error_and_leaves_no_index(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _convert(out, {"s1": 2}, keep_cache=True)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dataset_writer, "write_shard", full)
    with pytest.raises(dataset_writer.ConvertError) as err:
        _convert(out, {"s1": 2})
    message = str(err.value)
    assert message.startswith(f"{out}: disk full while writing the shards: the conversion needs")
    assert "\n" not in message and "MB are free" in message
    assert not (out / "manifest.json").exists() and not (out / "report.json").exists()
    monkeypatch.setattr(dataset_writer, "write_shard", lambda *a: {"num_records": 0})
    monkeypatch.setattr(manifest, "save", full)
    with pytest.raises(dataset_writer.ConvertError, match=r"while writing report\.json / manifest"):
        _convert(out, {"s1": 2})
    assert not (out / "manifest.json").exists()


def test_a_second_writer_into_a_held_folder_is_refused_and_touches_nothing(tmp_path):
    out = tmp_path / "out"
    _convert(out, {"s1": 2})
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    with FolderLock(out, "conversion"), pytest.raises(dataset_writer.FolderBusyError):
        _convert(out, {"s1": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before
