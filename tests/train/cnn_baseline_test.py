"""models.slice_cnn and train.cnn_baseline: the CNN yardstick of the ablation.

The forward pass against a hand-built network whose logit is exactly the slice's largest
positive pixel (identity taps, ReLU, max pools and the global max commute with it); on
synthetic slices whose calcified ones carry 400-900 HU discs the trained CNN separates
them on val and test (ROC-AUC from ``eval.metrics.roc_auc``); the run is deterministic.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dinolg_jax.models.slice_cnn import CnnLogits, SliceCNN
from dinolg_jax.phantom import synthetic_records
from dinolg_jax.train import cnn_baseline


def test_an_identity_network_returns_the_largest_positive_pixel():
    model = SliceCNN(channels=(2, 3, 2, 4))
    images = np.random.default_rng(0).normal(size=(3, 12, 12, 1)).astype(np.float32)
    params = jax.tree.map(jnp.zeros_like, model.init(jax.random.PRNGKey(0), images)["params"])
    for i in range(4):  # the centre tap carries channel 0 to channel 0
        params[f"conv{i}"]["kernel"] = params[f"conv{i}"]["kernel"].at[1, 1, 0, 0].set(1.0)
    params["head"]["kernel"] = params["head"]["kernel"].at[0, 0].set(1.0)
    params["head"]["bias"] = jnp.full((1,), 0.25)
    got = np.asarray(CnnLogits(model)(params, jnp.asarray(images)))
    want = np.maximum(images, 0).max(axis=(1, 2, 3)) + 0.25
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _config(manifest):
    data = ml_collections.ConfigDict(
        {"manifest": str(manifest), "hu_window": (-1000.0, 1000.0), "eval_size": 0,
         "batch_size": 8, "positive_fraction": 0.5, "augment": False, "seed": 0,
         "shuffle": True, "worker_count": 0, "worker_buffer_size": 2, "read_threads": 1,
         "read_buffer_size": 2}
    )  # fmt: skip
    return ml_collections.ConfigDict(
        {"seed": 0, "channels": (8, 8, 16, 16), "data": data,
         "splits": {"train": "train", "val": "val", "test": "test"},
         "optim": {"num_steps": 30, "warmup_steps": 3, "lr": 1e-2, "weight_decay": 0.0,
                   "clip_norm": 1.0},
         "mesh": {"data": -1, "fsdp": 1}, "log_every": 10, "tensorboard": False,
         "checkpoint": {"every_steps": 100, "keep": 2, "async_save": False}}
    )  # fmt: skip


@pytest.mark.slow
def test_the_cnn_separates_calcified_slices_and_is_deterministic(tmp_path):
    manifest = synthetic_records.write_dataset(tmp_path / "records", size=32, studies=4)
    out = cnn_baseline.train_cnn_baseline(_config(manifest), tmp_path / "a")
    assert (out["status"], out["step"]) == ("done", 30)
    assert out["val_roc_auc"] == 1.0 and out["test_roc_auc"] == 1.0
    again = cnn_baseline.train_cnn_baseline(_config(manifest), tmp_path / "b")
    assert again["params_checksum"] == out["params_checksum"]
    # a finished run returns its summary at once
    assert cnn_baseline.train_cnn_baseline(_config(manifest), tmp_path / "a") == out
