"""Round-trip and validation of the slice record schema."""

import numpy as np
import pytest

from dinolg_jax.data import records


def _record(rng: np.random.Generator) -> dict:
    labels = np.zeros((16, 12), np.uint8)
    labels[3:5, 4:6] = 2
    return {
        "image": rng.integers(-1024, 3000, (16, 12)).astype(np.int16),
        "labels": labels,
        "study": "gated-0003",
        "slice": 7,
        "num_slices": 40,
        "z_mm": -120.5,
        "slice_thickness_mm": 3.0,
        "pixel_mm": np.array([0.41, 0.41], np.float32),
        "lesion_centers": np.array([[3.5, 4.5]], np.float32),
        "lesion_vessels": np.array([2], np.uint8),
        "has_calcium": True,
        "kind": "gated",
        "kvp": 120.0,
        "position_mm": np.array([-181.123456789, -204.5, -120.5]),
        "orientation": np.array([1.0, 0.0, 0.0, 0.0, 0.99998, 0.0063]),
        "lossy_compression": False,
    }


def test_round_trip_is_exact():
    rec = _record(np.random.default_rng(0))
    out = records.decode(records.encode(rec))
    assert set(out) == set(rec)
    for k, v in rec.items():
        if isinstance(v, np.ndarray):
            assert out[k].dtype == records.ARRAY_FIELDS[k][0]
            np.testing.assert_array_equal(out[k], v)
        else:
            assert out[k] == v and type(out[k]) is type(v)


def test_encoding_is_deterministic():
    rec = _record(np.random.default_rng(1))
    assert records.encode(rec) == records.encode(dict(rec))


def test_empty_lesions_round_trip():
    rec = _record(np.random.default_rng(2))
    rec.update(
        labels=np.zeros((16, 12), np.uint8),
        has_calcium=False,
        lesion_centers=np.zeros((0, 2), np.float32),
        lesion_vessels=np.zeros((0,), np.uint8),
    )
    out = records.decode(records.encode(rec))
    assert out["lesion_centers"].shape == (0, 2)
    assert not out["has_calcium"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image": np.full((16, 12), 40000)}, "does not fit"),
        ({"has_calcium": False}, "disagrees"),
        ({"slice": "7"}, "must be int"),
        ({"lesion_centers": np.zeros(2)}, "rank"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_bad_records_are_refused(change, message):
    rec = _record(np.random.default_rng(3))
    rec.update(change)
    with pytest.raises(records.RecordError, match=message):
        records.encode(rec)


def test_bad_bytes_are_refused():
    data = records.encode(_record(np.random.default_rng(4)))
    with pytest.raises(records.RecordError, match="magic"):
        records.decode(b"XXXX" + data[4:])
    with pytest.raises(records.RecordError, match="truncated"):
        records.decode(data[:-10])
    with pytest.raises(records.RecordError, match="version"):
        records.decode(data[:4] + b"\x09\x00" + data[6:])


def test_version_1_shards_get_a_clear_error():
    """Records written before geometry went in (version 1) name the fix."""
    import struct

    data = bytearray(records.encode(_record(np.random.default_rng(5))))
    struct.pack_into("<H", data, 4, 1)
    with pytest.raises(records.RecordError, match=r"version 1 .*re-run tools/convert_coca\.py"):
        records.decode(bytes(data))
    assert records.array_shape(bytes(data), "image") == (16, 12)  # the header still reads


def test_world_position_kept_exactly():
    rec = _record(np.random.default_rng(6))
    out = records.decode(records.encode(rec), fields=["position_mm"])
    assert out["position_mm"].tolist() == [-181.123456789, -204.5, -120.5]
    assert "image" not in out and out["lossy_compression"] is False
