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
