"""inference.loading.train_split: the one splits block, and workdirs written before it."""

import ml_collections

from configs import common
from dinolg_jax.inference import loading


def test_train_split_reads_the_splits_block_and_old_workdirs():
    for config in (common.probe_config(), common.segment_config()):
        config.splits.train = "pretrain"
        assert loading.train_split(ml_collections.ConfigDict(config.to_dict())) == "pretrain"
    # config.json of workdirs written before the splits block (probe, then segmenter)
    assert loading.train_split({"eval": {"train_split": "a"}, "data": {}}) == "a"
    assert loading.train_split(ml_collections.ConfigDict({"data": {"train_split": "b"}})) == "b"
    assert loading.train_split({"data": {"manifest": ""}}) == "train"


def test_training_grid_is_the_median_spacing_of_the_train_studies(tmp_path) -> None:
    """The grid read from a converted phantom: median / min / max of the train split's
    pixel spacings, each read back from the release's own DICOM files."""
    import json

    import numpy as np
    import pytest

    from dinolg_jax.data import coca, convert
    from dinolg_jax.data import manifest as manifest_lib
    from dinolg_jax.phantom import coca_release

    rel = tmp_path / "release"
    coca_release.make_release(rel, n_gated=12, n_nongated=0, seed=2, size=32, slices=(4, 5))
    convert.convert_release(rel, tmp_path / "records", shards_per_split=1, progress=False)
    manifest = manifest_lib.load(tmp_path / "records")
    train = manifest.studies_in("train")
    assert len(train) >= 3
    spacing = [coca.load_gated_study(rel, int(s.split("-")[1])).pixel_mm[0] for s in train]
    grid = loading.training_grid(tmp_path / "records", "train")
    assert grid.shape == (32, 32)
    assert grid.pixel_mm[0] == pytest.approx(np.median(spacing), rel=1e-6)
    assert grid.range_mm[1] == pytest.approx((min(spacing), max(spacing)), rel=1e-6)
    half = loading.training_grid(tmp_path / "records", "train", input_size=64, resizes=True)
    assert half.shape == (64, 64) and half.resizes
    assert half.pixel_mm[1] == pytest.approx(np.median(spacing) / 2, rel=1e-6)
    # a segmenter workdir whose config names that manifest gets it; one without, None
    work = tmp_path / "seg"
    work.mkdir()
    cfg = common.segment_config()
    cfg.data.manifest = str(tmp_path / "records")
    (work / "config.json").write_text(json.dumps(cfg.to_dict(), default=str))
    got = loading.segmenter_grid(work, loading.read_config(work))
    assert got is not None and got.pixel_mm == grid.pixel_mm
    cfg.data.manifest = str(tmp_path / "gone")
    (work / "config.json").write_text(json.dumps(cfg.to_dict(), default=str))
    assert loading.segmenter_grid(work, loading.read_config(work)) is None
    with pytest.raises(loading.WorkdirError, match="slice size"):
        loading.segmenter_grid(work, loading.read_config(work), model_spacing_mm=0.7)
