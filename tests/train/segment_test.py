"""Segmentation: loss against a numpy reference, metrics by hand, sampling, a training run."""

import importlib.util
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dinolg_jax.eval import segment_eval
from dinolg_jax.models.unet import UNet
from dinolg_jax.phantom.synthetic_records import write_dataset
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime.run import jit_step
from dinolg_jax.train import segment


def _np_loss(logits, labels, w, ce_w, dice_w, s):
    k = logits.shape[-1]
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    flat_lp, flat_y = logp.reshape(-1, k), labels.reshape(-1)
    pix_w = w[flat_y]
    ce = sum(-pix_w[i] * flat_lp[i, flat_y[i]] for i in range(len(flat_y))) / pix_w.sum()
    p = np.exp(flat_lp)
    losses = []
    for c in range(1, k):
        y = flat_y == c
        if y.any():  # arteries absent from the batch have no Dice term
            losses.append(1 - (2 * p[y, c].sum() + s) / (p[:, c].sum() + y.sum() + s))
    return ce_w * ce + dice_w * (np.mean(losses) if losses else 0.0)


def test_loss_matches_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (2, 4, 3))
    labels[labels == 3] = 0  # LCA absent: its Dice must not enter the loss
    w = np.array([1.0, 5.0, 5.0, 2.0, 3.0], np.float32)
    loss, aux = segment.segmentation_loss(
        jnp.asarray(logits), jnp.asarray(labels), w, ce_weight=0.7, dice_weight=1.3, smooth=0.5
    )
    np.testing.assert_allclose(float(loss), _np_loss(logits, labels, w, 0.7, 1.3, 0.5), rtol=1e-5)
    assert aux["dice_per_class"].shape == (4,)
    # No calcium in the batch: CE only.
    bg = np.zeros_like(labels)
    loss_bg, aux_bg = segment.segmentation_loss(jnp.asarray(logits), bg, w)
    assert float(aux_bg["dice_loss"]) == 0.0
    np.testing.assert_allclose(float(loss_bg), _np_loss(logits, bg, w, 1.0, 1.0, 1.0), rtol=1e-5)


def test_loss_of_confident_correct_prediction_is_near_zero():
    labels = np.zeros((1, 8, 8), np.int32)
    for c in range(1, 5):
        labels[0, c, c] = c
    logits = 30.0 * jax.nn.one_hot(labels, 5)
    loss, _ = segment.segmentation_loss(logits, labels, jnp.ones(5))
    assert float(loss) < 1e-6
    wrong, _ = segment.segmentation_loss(
        30.0 * jax.nn.one_hot(jnp.zeros_like(labels), 5), labels, jnp.ones(5)
    )
    # All-background prediction: every vessel Dice = s / (1 + s) = 0.5 and CE ~ 30 * 4/64.
    np.testing.assert_allclose(float(wrong), 30 * 4 / 64 + 0.5, rtol=1e-4)


def test_per_artery_by_hand():
    counts = np.zeros((2, 5, 3), np.int64)  # (intersection, predicted, true)
    counts[0, 1] = (4, 5, 7)  # RCA slice 0
    counts[1, 1] = (2, 3, 3)  # RCA slice 1: pooled inter 6, pred 8, true 10 -> IoU 6/12
    counts[1, 3] = (0, 3, 0)  # LCA: predicted, absent -> 0
    out = segment_eval.per_artery(counts)
    assert out["RCA"]["iou"] == pytest.approx(0.5) and out["RCA"]["dice"] == pytest.approx(2 / 3)
    assert out["LCA"]["iou"] == 0.0 and out["LCA"]["dice"] == 0.0
    assert out["LAD"]["iou"] is None and out["LCX"]["dice"] is None
    assert out["RCA"]["true_px"] == 10 and out["LCA"]["pred_px"] == 3


def _phantom_batch(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dim 'tissue' with 1-3 bright square lesions per slice, each labelled by vessel."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.2, 0.03, (n, size, size)).astype(np.float32)
    labels = np.zeros((n, size, size), np.int32)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(2, size - 4, 2)
            vessel = rng.integers(1, 5)
            images[i, r : r + 2, c : c + 2] = 0.6 + 0.1 * vessel  # brightness codes the vessel
            labels[i, r : r + 2, c : c + 2] = vessel
    return images[..., None], labels


def test_few_steps_lower_the_loss():
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:2])  # the end-to-end test uses all 8
    model = UNet(filters=4, depth=2)
    loss_cfg = ml_collections.ConfigDict(
        {"class_weights": (1.0, 10.0, 10.0, 10.0, 10.0), "ce_weight": 1.0, "dice_weight": 1.0,
         "smooth": 1.0}
    )  # fmt: skip
    optim = ml_collections.ConfigDict(
        {"lr": 3e-2, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0,
         "grad_clip": 0.0}
    )  # fmt: skip
    tx = segment.segment_optimizer(optim, total_steps=12)
    state, _, shardings = segment.create_state(model, tx, segment.init_key(0), (16, 16), mesh)
    batch_sh = mesh_lib.batch_sharding(mesh)
    step_fn = jit_step(
        segment.make_train_step(model, loss_cfg, tx),
        mesh,
        shardings,
        {"image": batch_sh, "labels": batch_sh},
    )
    images, labels = _phantom_batch(8, 16, seed=1)
    batch = {
        "image": mesh_lib.global_batch_from_numpy(images, mesh),
        "labels": mesh_lib.global_batch_from_numpy(labels, mesh),
    }
    losses = []
    for _ in range(12):
        state, m = step_fn(state, batch)
        losses.append(float(m["loss"]))
    assert int(state.step) == 12
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    # Sharded per-slice counts equal a numpy recount of the same argmax.
    counts = segment_eval.make_count_fn(model, mesh, 5)(
        state.params, batch["image"], batch["labels"]
    )
    pred = np.argmax(np.asarray(jax.jit(model.apply)({"params": state.params}, images)), -1)
    for c in range(5):
        inter = ((pred == c) & (labels == c)).sum((1, 2))
        want = np.stack([inter, (pred == c).sum((1, 2)), (labels == c).sum((1, 2))], 1)
        np.testing.assert_array_equal(np.asarray(counts)[:, c], want)


def _smoke_config(manifest, steps: int):
    path = Path(__file__).resolve().parents[2] / "configs" / "segment.py"
    spec = importlib.util.spec_from_file_location("segment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("unet,runlocal")
    c.model.kwargs = {"filters": 4, "depth": 2}
    c.data.manifest = str(manifest)
    c.optim.num_steps = steps
    c.checkpoint.every_steps = 2
    c.log_every = 1
    c.eval.batch_size = 8
    return c


@pytest.mark.slow
def test_train_segmenter_resumes_exactly_and_evaluates(tmp_path):
    manifest = write_dataset(tmp_path / "data", size=32, studies=2, slices_per_study=6)
    work = tmp_path / "run"
    first = segment.train_segmenter(_smoke_config(manifest, 4), work)
    assert first["step"] == 4
    # the grid it learnt at, for inference: write_dataset's records are 0.7 mm, 32 px
    assert first["slice_size"] == first["input_shape"] == [32, 32]
    spacing = first["pixel_spacing_mm"]
    assert (spacing["studies"], spacing["split"]) == (2, "train")
    for key in ("median", "min", "max"):
        assert spacing[key] == pytest.approx([0.7, 0.7], rel=1e-6)
    # Drop the final checkpoint: the re-run resumes from step 2 and must end bit-identical.
    shutil.rmtree(work / "checkpoints" / "4")
    again = segment.train_segmenter(_smoke_config(manifest, 4), work)
    assert again["params_checksum"] == first["params_checksum"]
    steps = [json.loads(x)["step"] for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 3, 4]
    ev = first["eval"]
    # write_dataset: slices 0 and 3 of each 6-slice study have lesions -> 4 of 12.
    assert ev["num_slices"] == 12 and ev["num_calcium_slices"] == 4
    assert set(ev["all_slices"]) == {"RCA", "LAD", "LCA", "LCX"}
    true_all = sum(v["true_px"] for v in ev["all_slices"].values())
    true_calc = sum(v["true_px"] for v in ev["calcium_slices"].values())
    assert true_all == true_calc > 0  # no foreground outside calcified slices
    # A re-run of the finished run returns its summary at once (no step, no new lines).
    lines = (work / "metrics.jsonl").read_text()
    rerun = segment.train_segmenter(_smoke_config(manifest, 4), work)
    assert rerun == json.loads((work / "summary.json").read_text())
    assert rerun["params_checksum"] == first["params_checksum"] and rerun["metrics"]
    assert (work / "metrics.jsonl").read_text() == lines


@pytest.mark.slow
def test_sigterm_checkpoints_and_stops_then_the_rerun_resumes(tmp_path, monkeypatch):
    from dinolg_jax.runtime import run as run_lib

    manifest = write_dataset(tmp_path / "data", size=32, studies=2, slices_per_study=6)
    work = tmp_path / "run"
    config = _smoke_config(manifest, 4)
    config.checkpoint.every_steps = 100
    with monkeypatch.context() as m:
        m.setattr(run_lib.Preemption, "should_stop", lambda self, step: step == 3)
        stopped = segment.train_segmenter(config, work)
    assert (stopped["status"], stopped["step"], stopped["eval"]) == ("preempted", 3, None)
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["3"]
    done = segment.train_segmenter(config, work)
    assert (done["status"], done["step"]) == ("done", 4) and done["eval"]["num_slices"] == 12
    steps = [json.loads(x)["step"] for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_smoke_config_phantom_has_val_and_test(tmp_path):
    # Without a manifest the smoke run makes its own phantom; it must have a test split
    # to evaluate on (the 6-patient phantom had none and failed after ~95 s of training).
    from dinolg_jax.data import manifest as manifest_lib
    from dinolg_jax.data.run_manifest import prepare_manifest

    c = _smoke_config("", 1)
    c.data.manifest = ""
    m = manifest_lib.load(prepare_manifest(c, tmp_path))
    assert m.num_records("val") > 0 and m.num_records(c.splits.test) > 0


def test_empty_eval_split_fails_before_training(tmp_path):
    from dinolg_jax.data import manifest as manifest_lib

    manifest = write_dataset(tmp_path / "data", size=32, studies=2, splits=("pretrain", "train"))
    data = json.loads(manifest.read_text())
    data["splits"]["test"] = {"shards": [], "num_records": 0, "num_studies": 0, "num_positive": 0}
    manifest_lib.save(data, manifest)
    work = tmp_path / "run"
    with pytest.raises(manifest_lib.ManifestError, match="split 'test' has no records"):
        segment.train_segmenter(_smoke_config(manifest, 4), work)
    assert not (work / "checkpoints").exists() and not (work / "metrics.jsonl").exists()


def test_the_logged_lr_follows_the_warmup_then_stays():
    # lr 1e-3 after 4 warmup steps: the step at count k applies 1e-3 * min(k / 4, 1)
    model = UNet(filters=4, depth=2)
    loss_cfg = ml_collections.ConfigDict(
        {"class_weights": (1.0,) * 5, "ce_weight": 1.0, "dice_weight": 0.0, "smooth": 1.0}
    )
    optim = ml_collections.ConfigDict(
        {"lr": 1e-3, "warmup_steps": 4, "schedule": "constant", "weight_decay": 0.0,
         "grad_clip": 0.0}
    )  # fmt: skip
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    tx = segment.segment_optimizer(optim, total_steps=7)
    schedule = segment.segment_schedule(optim, total_steps=7)
    state, _, _ = segment.create_state(model, tx, segment.init_key(0), (16, 16), mesh)
    step = jax.jit(segment.make_train_step(model, loss_cfg, tx, schedule))
    images, labels = _phantom_batch(2, 16, seed=1)
    lrs = []
    for _ in range(7):
        state, m = step(state, {"image": images, "labels": labels})
        lrs.append(float(m["lr"]))
    np.testing.assert_allclose(lrs, [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], atol=1e-9)
    # a cosine schedule ends at 0 on its last step count
    optim.schedule = "cosine"
    assert float(segment.segment_schedule(optim, total_steps=7)(7)) == pytest.approx(0.0, abs=1e-12)
