"""manifest.json read/write and its consistency checks."""

import json

import pytest

from dinolg_jax.data import manifest


def _data() -> dict:
    return {
        "record_version": 1,
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
        (tmp_path / shard["path"]).write_bytes(b"")
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
