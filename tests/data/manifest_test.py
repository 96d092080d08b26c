"""manifest.json read/write, its consistency checks against the shards, verify_dataset.

Faults are made on real ArrayRecord shards: a truncated manifest, a truncated shard, a
shard replaced by another run's, a byte flipped inside a record (found by the hash
check of ``tools/verify_dataset.py``, and named when training reads it), an empty split.
"""

import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from configs import common
from dinolg_jax.data import manifest, pipeline, records, shards
from dinolg_jax.phantom import synthetic_records

REPO = Path(__file__).resolve().parents[2]
VERIFY = REPO / "tools" / "verify_dataset.py"


def _data() -> dict:
    return {
        "record_version": records.VERSION,
        "seed": 3,
        "splits": {
            "train": {
                "shards": [
                    {"path": "train-00000-of-00002.array_record", "num_records": 5},
                    {"path": "train-00001-of-00002.array_record", "num_records": 4},
                ],
                "num_records": 9,
                "num_studies": 2,
                "num_positive": 2,
            }
        },
        "studies": {
            "gated-0001": {
                "kind": "gated",
                "split": "train",
                "num_slices": 6,
                "records": {"train": 3},
            },
            "gated-0000": {
                "kind": "gated",
                "split": "train",
                "num_slices": 3,
                "records": {"train": 0},
            },
        },
    }


def _write(tmp_path, data):
    for shard in data["splits"]["train"]["shards"]:
        writer = ArrayRecordWriter(str(tmp_path / shard["path"]), "group_size:1")
        for i in range(shard["num_records"]):
            writer.write(b"record %d" % i)
        writer.close()
    manifest.save(data, tmp_path / "manifest.json")


def test_round_trip_and_queries(tmp_path):
    _write(tmp_path, _data())
    m = manifest.load(tmp_path)
    assert m.seed == 3
    assert m.num_records("train") == 9
    assert m.shard_paths("train") == [
        str(tmp_path / "train-00000-of-00002.array_record"),
        str(tmp_path / "train-00001-of-00002.array_record"),
    ]
    assert m.studies_in("train") == ["gated-0000", "gated-0001"]
    assert list(m.study_range("gated-0001", "train")) == [3, 4, 5, 6, 7, 8]
    assert json.loads((tmp_path / "manifest.json").read_text())["version"] == 1
    assert not list(tmp_path.glob(".manifest-*"))


def test_errors(tmp_path):
    with pytest.raises(manifest.ManifestError, match="no manifest"):
        manifest.load(tmp_path)
    data = _data()
    _write(tmp_path, data)
    m = manifest.load(tmp_path)
    with pytest.raises(manifest.ManifestError, match="split 'val'"):
        m.num_records("val")
    with pytest.raises(manifest.ManifestError, match="no records"):
        m.study_range("gated-0000", "pretrain")
    data["splits"]["train"]["num_records"] = 10
    manifest.save(data, tmp_path / "manifest.json")
    with pytest.raises(manifest.ManifestError, match="counts 9"):
        manifest.load(tmp_path)
    (tmp_path / "train-00001-of-00002.array_record").unlink()
    with pytest.raises(manifest.ManifestError, match="missing"):
        manifest.load(tmp_path)
    data["version"] = 2
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(manifest.ManifestError, match="version 2"):
        manifest.load(tmp_path)


@pytest.fixture()
def dataset(tmp_path):
    """A small real dataset (synthetic records) with counts, sizes and hashes recorded."""
    path = synthetic_records.write_dataset(
        tmp_path / "ds", size=32, studies=3, slices_per_study=4, shards=2, seed=1
    )
    return path.parent


def _verify(path):
    return subprocess.run(
        [sys.executable, str(VERIFY), str(path)], capture_output=True, text=True, timeout=120
    )


def test_manifest_records_counts_sizes_and_hashes(dataset):
    m = manifest.load(dataset)
    for info in m.splits.values():
        for entry in info["shards"]:
            path = m.root / entry["path"]
            assert entry["num_records"] == shards.count_records(path) == 6
            assert entry["bytes"] == path.stat().st_size
            assert entry["sha256"] == shards.sha256_file(path)
    proc = _verify(dataset)
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout and proc.stdout.count(" ok") == 4


def test_truncated_manifest_names_the_file(dataset):
    path = dataset / "manifest.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(manifest.ManifestError, match=rf"{path}: not valid JSON.*truncated"):
        manifest.load(dataset)
    proc = _verify(dataset)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith(f"error: {path}: not valid JSON")


def test_truncated_or_foreign_shard_fails_the_cheap_check(dataset):
    shard = dataset / "train-00001-of-00002.array_record"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    with pytest.raises(manifest.ManifestError, match=r"train-00001-of-00002.*bytes.*truncated"):
        manifest.load(dataset)
    # Same size, other records (e.g. written by another conversion): the footer's count.
    data = json.loads((dataset / "manifest.json").read_text())
    entry = data["splits"]["train"]["shards"][1]
    writer = ArrayRecordWriter(str(shard), "group_size:1")
    for _ in range(5):
        writer.write(b"x" * 10)
    writer.close()
    entry["bytes"] = shard.stat().st_size
    manifest.save(data, dataset / "manifest.json")
    with pytest.raises(manifest.ManifestError, match="holds 5 records, the manifest says 6"):
        manifest.load(dataset)


def _flip_inside_a_record(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x5A  # inside the first records' chunk data (files pad to 64 KiB blocks)
    path.write_bytes(bytes(data))


def test_flipped_byte_found_by_verify_and_named_when_read(dataset):
    shard = dataset / "val-00000-of-00002.array_record"
    _flip_inside_a_record(shard)
    m = manifest.load(dataset)  # size and count still agree: the cheap check passes
    proc = _verify(dataset)
    assert proc.returncode == 1
    assert f"error: {shard} (split val): sha256 differs" in proc.stdout
    assert proc.stderr.startswith("error: 1 bad shard(s)")
    assert "val" in proc.stdout and "1 bad" in proc.stdout
    # Training / evaluation reading it: the error names the shard and the record.
    data = common.data_config()
    data.batch_size, data.worker_count, data.read_threads = 4, 0, 0
    with pytest.raises(shards.ShardReadError, match=rf"{shard} record \d+: .*Corrupted"):
        for _ in pipeline.eval_dataset(m, "val", data):
            pass


def test_empty_split_names_the_split(tmp_path):
    data = _data()
    data["splits"]["test"] = {"shards": [], "num_records": 0, "num_studies": 0, "num_positive": 0}
    _write(tmp_path, data)
    m = manifest.load(tmp_path)
    with pytest.raises(manifest.ManifestError, match=r"split 'test' has no records.*\['train'\]"):
        m.shard_paths("test")
    cfg = ml_collections.ConfigDict(common.data_config().to_dict())
    with pytest.raises(manifest.ManifestError, match="split 'test' has no records"):
        pipeline.eval_dataset(m, "test", cfg)


def test_damaged_footer_names_the_shard(dataset):
    shard = dataset / "pretrain-00001-of-00002.array_record"
    data = bytearray(shard.read_bytes())
    assert len(data) > 65600
    data[65560] ^= 0x5A  # the block header before the footer (64 KiB blocks)
    shard.write_bytes(bytes(data))
    with pytest.raises(manifest.ManifestError, match=r"pretrain-00001-of-00002.*unreadable"):
        manifest.load(dataset)
    with pytest.raises(shards.ShardReadError, match=rf"cannot open shard {shard}:"):
        shards.NamedShardSource([str(dataset / "pretrain-00000-of-00002.array_record"), str(shard)])
