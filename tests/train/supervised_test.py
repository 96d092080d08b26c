"""Tests for train/supervised.py: the supervised ceiling of the ablation.

The loss against hand-computed cross-entropies; the first logged loss is exactly ln 2
(the head starts at zero, so every logit is 0); on synthetic slices whose calcified ones
carry 400-900 HU discs the trained encoder separates them (ROC-AUC from
``eval.metrics.roc_auc``, itself tested against scikit-learn's definition), the export
loads back, differs from its init, and a second run gives the same bytes.
"""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dinolg_jax.eval import features as features_lib
from dinolg_jax.eval.features import extract_features
from dinolg_jax.eval.metrics import roc_auc
from dinolg_jax.models.vit import ViT
from dinolg_jax.phantom import synthetic_records
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.train import slice_classifier, supervised


def test_bce_is_the_mean_of_hand_computed_cross_entropies():
    logits = np.array([0.0, 2.0, -1.0], np.float32)
    labels = np.array([True, False, True])
    want = (math.log(2) + math.log1p(math.exp(2.0)) + math.log1p(math.exp(1.0))) / 3
    assert float(slice_classifier.bce_loss(logits, labels)) == pytest.approx(want, rel=1e-6)


def test_a_schedule_without_steps_after_warmup_is_refused():
    optim = ml_collections.ConfigDict(
        {"num_steps": 10, "warmup_steps": 10, "lr": 1e-3, "weight_decay": 0.0, "clip_norm": 1}
    )
    with pytest.raises(ValueError, match="warmup_steps < num_steps"):
        slice_classifier.classifier_optimizer(optim)


def test_cell_bce_weighs_calcium_and_other_cells_half_each():
    # 2 slices x 3 cells; calcium cells (0, 0) and (1, 2), logits chosen by hand.
    logits = np.array([[2.0, 0.0, -1.0], [1.0, -3.0, 0.5]], np.float32)
    cells = np.array([[True, False, False], [False, False, True]])
    bce = lambda z, y: math.log1p(math.exp(-z)) if y else math.log1p(math.exp(z))
    pos = (bce(2.0, 1) + bce(0.5, 1)) / 2
    neg = (bce(0.0, 0) + bce(-1.0, 0) + bce(1.0, 0) + bce(-3.0, 0)) / 4
    got = float(slice_classifier.cell_bce_loss(logits, cells))
    assert got == pytest.approx(0.5 * (pos + neg), rel=1e-6)
    # no calcium cell in the batch: the other cells alone
    none = float(slice_classifier.cell_bce_loss(logits, np.zeros_like(cells)))
    want = np.mean([bce(z, 0) for z in logits.ravel()])
    assert none == pytest.approx(want, rel=1e-6)


def test_patch_head_scores_every_token_and_its_slice_logit_is_their_max():
    vit = ViT(variant="mu/8")
    images = np.random.default_rng(0).normal(size=(2, 32, 24, 1)).astype(np.float32)
    enc = vit.init(jax.random.PRNGKey(1), images[:1])["params"]
    head = {"kernel": np.linspace(-1, 1, 32).astype(np.float32), "bias": np.float32(0.25)}
    model = supervised.PatchHead(vit)
    assert isinstance(model, slice_classifier.DenseLogits)
    cells = np.asarray(model.cell_logits({"encoder": enc, "head": head}, images))
    tokens = np.asarray(vit.apply({"params": enc}, images, train=False)[1]["tokens"])[:, 1:]
    assert model.cell_grid(32, 24) == (4, 3) and cells.shape == (2, 12)
    np.testing.assert_allclose(cells, tokens @ head["kernel"] + 0.25, rtol=1e-5, atol=1e-6)
    slice_logits = np.asarray(model({"encoder": enc, "head": head}, images))
    np.testing.assert_array_equal(slice_logits, cells.max(axis=1))


def _records_and_init(tmp_path):
    """Synthetic 32 px records (4 studies) and a random mu/8 encoder export at
    ``tmp_path / "init"``; returns the manifest."""
    manifest = synthetic_records.write_dataset(tmp_path / "records", size=32, studies=4)
    vit = ViT(variant="mu/8")
    init = vit.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 1), np.float32))["params"]
    ckpt_lib.save_encoder(tmp_path / "init", init, {"variant": "mu/8", "dtype": "float32"})
    return manifest


def _config(manifest, init):
    data = ml_collections.ConfigDict(
        {"manifest": str(manifest), "hu_window": (-1000.0, 1000.0),
         "eval_size": 0, "batch_size": 8, "positive_fraction": 0.5, "augment": True,
         "hflip_prob": 0.5, "vflip_prob": 0.5, "brightness_prob": 0.5,
         "brightness_delta": 0.05, "noise_prob": 0.5, "noise_std": 0.01, "seed": 0,
         "shuffle": True, "worker_count": 0, "worker_buffer_size": 2, "read_threads": 1,
         "read_buffer_size": 2, "global_size": 32}
    )  # fmt: skip
    return ml_collections.ConfigDict(
        {"seed": 0, "target": "slice", "init_encoder": str(init), "data": data,
         "splits": {"train": "train", "val": "val"},
         "features": {"pooling": "max", "n_last_blocks": 1},
         "optim": {"num_steps": 40, "warmup_steps": 4, "lr": 3e-3, "weight_decay": 0.0,
                   "clip_norm": 1.0},
         "mesh": {"data": -1, "fsdp": 1}, "log_every": 10, "tensorboard": False,
         "checkpoint": {"every_steps": 20, "keep": 2, "async_save": False}}
    )  # fmt: skip


def _scores(encoder_dir, manifest):
    """Max-pooled features of an encoder export on the test split, with the labels."""
    params, model_config = ckpt_lib.load_encoder(encoder_dir)
    vit = features_lib.encoder_model(model_config, 1, "float32")
    mesh = mesh_lib.make_mesh()
    data = ml_collections.ConfigDict(
        {"batch_size": 8, "hu_window": (-1000.0, 1000.0), "eval_size": 0, "worker_count": 0,
         "read_threads": 1, "read_buffer_size": 2}
    )  # fmt: skip
    feats = extract_features(vit, params, manifest, "test", data, mesh, pooling="max",
                             progress=False)  # fmt: skip
    return feats["pooled"], feats["has_calcium"]


@pytest.mark.slow
def test_the_ceiling_learns_separable_slices_and_is_deterministic(tmp_path):
    manifest = _records_and_init(tmp_path)

    out = supervised.train_supervised(_config(manifest, tmp_path / "init"), tmp_path / "a")
    assert out["status"] == "done" and out["step"] == 40
    assert out["first_loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero head: logit 0
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [10, 20, 30, 40]
    assert lines[-1]["loss_window_mean"] < 0.5  # steps 31-40: well below ln 2 = 0.693

    x, y = _scores(tmp_path / "a", manifest)
    x0, _ = _scores(tmp_path / "init", manifest)
    assert y.sum() == 8 and len(y) == 24
    assert not np.allclose(x, x0)  # the export is the trained encoder, not the init
    # A logistic direction is not needed: one trained feature already ranks the slices.
    best = max(roc_auc(x[:, j], y) for j in range(x.shape[1]))
    assert best == 1.0 > max(roc_auc(x0[:, j], y) for j in range(x0.shape[1]))  # init: 0.88
    assert out["val_roc_auc"] == 1.0 and out["val_split"] == "val"  # with its own head

    again = supervised.train_supervised(_config(manifest, tmp_path / "init"), tmp_path / "b")
    assert again["params_checksum"] == out["params_checksum"]
    assert again["metrics"]["loss"] == out["metrics"]["loss"]


@pytest.mark.slow
def test_a_preempted_ceiling_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, monkeypatch):
    from dinolg_jax.runtime import run as run_lib

    manifest = _records_and_init(tmp_path)
    config = _config(manifest, tmp_path / "init")
    config.optim.num_steps = 12
    config.checkpoint.every_steps = 100
    whole = supervised.train_supervised(config, tmp_path / "whole")
    with monkeypatch.context() as m:
        m.setattr(run_lib.Preemption, "should_stop", lambda self, step: step == 5)
        stopped = supervised.train_supervised(config, tmp_path / "cut")
    assert (stopped["status"], stopped["step"], stopped["val_roc_auc"]) == ("preempted", 5, None)
    assert not (tmp_path / "cut" / "encoder").exists()
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["5"]
    done = supervised.train_supervised(config, tmp_path / "cut")
    assert (done["status"], done["step"]) == ("done", 12)
    assert done["params_checksum"] == whole["params_checksum"]
    assert done["val_roc_auc"] == whole["val_roc_auc"]
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [5, 10, 12]
    # a finished run returns its summary at once, without a step or a new line
    assert supervised.train_supervised(config, tmp_path / "cut") == done
    assert (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines() == lines


@pytest.mark.slow
def test_the_patch_ceiling_learns_where_the_calcium_is(tmp_path):
    manifest = _records_and_init(tmp_path)
    config = _config(manifest, tmp_path / "init")
    config.target = "patch"
    out = supervised.train_supervised(config, tmp_path / "p")
    # zero head: every cell logit is 0, so the slice BCE and the balanced cell BCE are ln 2
    assert out["first_loss"] == pytest.approx(2 * math.log(2), abs=1e-6)
    lines = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["cell_loss"] < 0.5 * math.log(2)
    assert out["val_roc_auc"] == 1.0
    x, y = _scores(tmp_path / "p", manifest)
    assert max(roc_auc(x[:, j], y) for j in range(x.shape[1])) == 1.0
    config.target = "pixels"
    with pytest.raises(ValueError, match="target must be one of"):
        supervised.train_supervised(config, tmp_path / "bad")


def test_the_logged_lr_is_the_rate_each_step_applied():
    # warmup 2 of 10 steps to lr 1.0, then cosine to 0: step k applies the rate of count k
    optim = ml_collections.ConfigDict(
        {"num_steps": 10, "warmup_steps": 2, "lr": 1.0, "weight_decay": 0.0, "clip_norm": 1e9}
    )

    def logits(p, x):
        return x.reshape(x.shape[0], -1) @ p

    params = np.zeros((4,), np.float32)
    tx = optax.sgd(slice_classifier.classifier_schedule(optim))
    step = jax.jit(
        slice_classifier.make_train_step(logits, tx, slice_classifier.classifier_schedule(optim))
    )
    state = slice_classifier.ClassifierState(jnp.zeros((), jnp.int32), params, tx.init(params))
    batch = {"image": np.ones((2, 2, 2, 1), np.float32), "labels": np.array([True, False])}
    lrs = []
    for _ in range(10):
        state, m = step(state, batch)
        lrs.append(float(m["lr"]))
    # hand values: k / 2 for k < 2, then 0.5 (1 + cos(pi (k - 2) / 8))
    want = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * (k - 2) / 8)) for k in range(2, 10)]
    np.testing.assert_allclose(lrs, want, atol=1e-6)
