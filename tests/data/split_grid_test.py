"""data.split_grid: the grid a model learnt at, from phantom records of known spacings;
``data.manifest.record_studies``; and inference reading the grid a summary recorded
before its manifest (``inference.loading.recorded_grid``)."""

import json

import numpy as np
import pytest

from configs import common
from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import split_grid
from dinolg_jax.inference import loading
from dinolg_jax.phantom import synthetic_records

# (row, col) mm per study, chosen so the median, min and max are read off by hand:
# rows sorted 0.5 0.6 0.7 0.8 0.9 -> median 0.7; cols 0.4 0.5 0.6 0.7 0.9 -> median 0.6.
SPACING = {
    "synthetic-0000": (0.5, 0.6),
    "synthetic-0001": (0.8, 0.7),
    "synthetic-0002": (0.6, 0.9),
    "synthetic-0003": (0.7, 0.4),
    "synthetic-0004": (0.9, 0.5),
}


@pytest.fixture
def known_spacings(tmp_path, monkeypatch):
    """5 studies of 3 slices, 32 px, each study at its SPACING; the manifest's path."""
    draw = synthetic_records.synthetic_slice

    def with_spacing(*args, study, **kwargs):
        rec = draw(*args, study=study, **kwargs)
        return {**rec, "pixel_mm": np.array(SPACING[study], np.float32)}

    monkeypatch.setattr(synthetic_records, "synthetic_slice", with_spacing)
    return synthetic_records.write_dataset(
        tmp_path / "data", size=32, studies=5, slices_per_study=3, shards=2
    )


def test_grid_is_the_median_min_max_of_the_studies_spacings(known_spacings):
    grid = split_grid.split_grid(known_spacings, "train")
    assert grid.shape == (32, 32) and grid.studies == 5 and grid.split == "train"
    assert grid.median_mm == pytest.approx((0.7, 0.6), rel=1e-6)
    assert grid.min_mm == pytest.approx((0.5, 0.4), rel=1e-6)
    assert grid.max_mm == pytest.approx((0.9, 0.9), rel=1e-6)
    # records resized 32 -> 16 px: each pixel spans twice the millimetres
    half = split_grid.split_grid(manifest_lib.load(known_spacings), "train", input_size=16)
    assert half.shape == (16, 16)
    assert half.median_mm == pytest.approx((1.4, 1.2), rel=1e-6)
    assert half.max_mm == pytest.approx((1.8, 1.8), rel=1e-6)


def test_summary_fields_round_trip_through_json(known_spacings):
    grid = split_grid.split_grid(known_spacings, "val", input_size=64)
    fields = json.loads(json.dumps(grid.summary_fields()))
    assert fields["slice_size"] == [64, 64]
    assert fields["pixel_spacing_mm"]["median"] == pytest.approx([0.35, 0.3], rel=1e-6)
    assert fields["pixel_spacing_mm"]["studies"] == 5
    assert split_grid.SplitGrid.from_summary({"step": 3, **fields}) == grid
    assert split_grid.SplitGrid.from_summary({"step": 3}) is None  # an older summary
    broken = {**fields, "pixel_spacing_mm": {"median": [0.0, 0.3], "min": [0, 0], "max": [1, 1]}}
    assert split_grid.SplitGrid.from_summary(broken) is None
    assert split_grid.SplitGrid.from_summary({**fields, "slice_size": "64"}) is None


def test_a_split_without_studies_is_a_manifest_error(known_spacings):
    data = json.loads(known_spacings.read_text())
    for entry in data["studies"].values():
        del entry["records"]["test"]
    known_spacings.write_text(json.dumps(data))
    with pytest.raises(manifest_lib.ManifestError, match="'test' has no studies"):
        split_grid.split_grid(known_spacings, "test")


def test_record_studies_names_each_records_study_in_order(known_spacings):
    got = manifest_lib.record_studies(known_spacings, "test")
    assert got.tolist() == [s for s in SPACING for _ in range(3)]
    from dinolg_jax.experiments import ablation_comparisons  # the old import still works

    assert ablation_comparisons.record_studies(known_spacings, "test").tolist() == got.tolist()


def test_inference_reads_the_summarys_grid_before_the_manifest(known_spacings, tmp_path):
    work = tmp_path / "seg"
    work.mkdir()
    cfg = common.segment_config()
    cfg.data.manifest = str(known_spacings)
    (work / "config.json").write_text(json.dumps(cfg.to_dict(), default=str))
    config = loading.read_config(work)
    from_manifest = loading.segmenter_grid(work, config)
    assert from_manifest.pixel_mm == pytest.approx((0.7, 0.6), rel=1e-6)
    # the summary's grid wins, even when the manifest is gone
    recorded = split_grid.split_grid(known_spacings, "train", input_size=16)
    (work / "summary.json").write_text(json.dumps({"step": 1, **recorded.summary_fields()}))
    cfg.data.manifest = str(tmp_path / "gone")
    (work / "config.json").write_text(json.dumps(cfg.to_dict(), default=str))
    got = loading.segmenter_grid(work, loading.read_config(work))
    assert got.pixel_mm == recorded.median_mm and got.shape == (16, 16) and not got.resizes
    assert got.range_mm == (
        (recorded.min_mm[0], recorded.max_mm[0]),
        (recorded.min_mm[1], recorded.max_mm[1]),
    )
    assert got.range_mm[1] == pytest.approx((0.8, 1.8), rel=1e-6)
    assert "summary.json" in got.origin
    # a summary cut short by a crash holds no grid: back to the (gone) manifest
    (work / "summary.json").write_text('{"step": 1, "pixel_spac')
    assert loading.segmenter_grid(work, loading.read_config(work)) is None
    # the gate: the recorded grid when it is of the size the features were taken at
    (work / "summary.json").write_text(json.dumps(recorded.summary_fields()))
    gate = loading.gate_grid(work, loading.read_config(work), 16)
    assert gate.resizes and gate.pixel_mm == recorded.median_mm
    assert loading.gate_grid(work, loading.read_config(work), 32) is None  # manifest gone
