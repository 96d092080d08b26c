"""Calcified-slice oversampling of the pretraining stream (``data.pretrain_positive_fraction``)."""

import numpy as np
import pytest

from configs import common
from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import pipeline, records
from dinolg_jax.phantom import synthetic_records


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_records.write_dataset(tmp_path_factory.mktemp("data"), size=32)


def _flags(path):
    m = manifest_lib.load(path)
    import grain

    src = grain.sources.ArrayRecordDataSource(m.shard_paths("pretrain"))
    return np.array([records.decode(src[i], fields=())["has_calcium"] for i in range(len(src))])


def test_indices_repeat_each_positive_and_keep_each_negative_once(dataset):
    flags = _flags(dataset)
    n_pos, n_neg = int(flags.sum()), int((~flags).sum())
    assert n_pos > 0 and n_neg > 0
    assert pipeline.pretrain_indices(dataset, "pretrain", 0.0) is None
    idx = pipeline.pretrain_indices(dataset, "pretrain", 0.5)
    reps = max(1, round(n_neg / n_pos))  # f / (1 - f) = 1
    counts = np.bincount(idx, minlength=len(flags))
    assert (counts[~flags] == 1).all() and (counts[flags] == reps).all()
    assert flags[idx].mean() == pytest.approx(n_pos * reps / (n_pos * reps + n_neg))
    with pytest.raises(ValueError, match="pretrain_positive_fraction"):
        pipeline.pretrain_indices(dataset, "pretrain", 1.0)


def test_oversampled_stream_is_deterministic_and_shows_the_share(dataset):
    c = common.data_config()
    c.batch_size, c.global_size, c.local_size = 8, 32, 16
    c.n_local_random, c.n_local_guided = 1, 1
    c.pretrain_positive_fraction = 0.5
    flags = _flags(dataset)
    idx = pipeline.pretrain_indices(dataset, "pretrain", 0.5)
    epoch = len(idx) // 8
    a = [next(it) for it in [iter(pipeline.pretrain_dataset(dataset, c))] for _ in range(epoch)]
    b = iter(pipeline.pretrain_dataset(dataset, c))
    for x in a[:3]:
        y = next(b)
        np.testing.assert_array_equal(x["global"], y["global"])
    share = np.mean([x["has_calcium"].mean() for x in a])
    assert share == pytest.approx(flags[idx].mean(), abs=1.0 / (8 * epoch) + 1e-9)
