import ml_collections
import numpy as np
import pytest

from dinolg_jax.eval import hu_baseline
from dinolg_jax.phantom import synthetic_records


def test_histogram_counts_each_pixel_once_in_its_half_open_bin():
    img = np.array([[[-2000, -1000, 129, 130], [199, 200, 3000, 5000]]], np.int16)
    got = hu_baseline.hu_histogram(img, edges=(-1000, 130, 200, 3000))
    # bins [-1000,130) [130,200) [200,3000); below -1000 -> first, >= 3000 -> last
    counts = np.array([[3, 2, 3]])
    np.testing.assert_allclose(got, np.log1p(counts), rtol=1e-6)
    assert got.dtype == np.float32 and got.shape == (1, 3)
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        hu_baseline.hu_histogram(img[0])


def test_baseline_separates_slices_whose_lesions_are_brighter_than_all_tissue(tmp_path):
    # Synthetic slices: soft tissue and air, lesions are 400-900 HU discs, so the 400-600
    # and 600-800 HU bins are non-empty exactly on the calcified slices: ROC-AUC 1.
    manifest = synthetic_records.write_dataset(tmp_path, size=32, studies=4, slices_per_study=6)
    images = np.stack([r["image"] for r in synthetic_records_records(manifest, "test")])
    x, y = hu_baseline.split_histograms(manifest, "test")
    assert len(y) == len(images) == 24 and y.sum() == 8  # slices 0 and 3 of each study
    bright = (images >= 400).reshape(len(images), -1).any(1)
    np.testing.assert_array_equal(bright, y)
    np.testing.assert_allclose(x, hu_baseline.hu_histogram(images))
    optim = ml_collections.ConfigDict(
        {"lr": 0.05, "epochs": 20, "batch_size": 8, "weight_decay": 0.0}
    )
    out = hu_baseline.hu_histogram_baseline(manifest, optim, seed=0)
    assert out["test_roc_auc"] == 1.0 and out["val_roc_auc"] == 1.0
    assert (out["test_slices"], out["test_calcified"]) == (24, 8)
    assert out["hu_edges"] == list(hu_baseline.HU_EDGES)


def synthetic_records_records(manifest, split):
    from dinolg_jax.data import manifest as manifest_lib
    from dinolg_jax.data import records
    from dinolg_jax.data.shards import NamedShardSource

    source = NamedShardSource(manifest_lib.load(manifest).shard_paths(split))
    return [records.decode(source[i]) for i in range(len(source))]
