"""DINO optimiser: decay mask, scheduled weight decay, clipping, frozen last layer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dinolg_jax.dino import optim
from dinolg_jax.dino.schedules import DinoSchedules
from dinolg_jax.models.heads import DINOHead
from dinolg_jax.models.vit import ViT


def _params():
    """A small params tree shaped like the student (ViT + head) without running a model."""
    rng = np.random.default_rng(0)

    def r(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    return {
        "backbone": {
            "cls_token": r(1, 1, 4),
            "pos_embed": r(1, 5, 4),
            "patch_embed": {"kernel": r(2, 2, 1, 4), "bias": r(4)},
            "blocks_0": {
                "norm1": {"scale": r(4), "bias": r(4)},
                "mlp": {"fc1": {"kernel": r(4, 8)}},
            },
        },
        "head": {
            "mlp_0": {"kernel": r(4, 3), "bias": r(3)},
            "last_layer": {"kernel": r(3, 6), "scale": r(6)},
        },
    }


def _leaf(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return tree


def test_decay_mask_on_real_model_trees():
    vit = jax.eval_shape(ViT("mu/8").init, jax.random.key(0), jnp.zeros((1, 224, 224, 1)))
    head = jax.eval_shape(
        DINOHead(out_dim=8, norm_last_layer=False).init, jax.random.key(0), jnp.zeros((1, 32))
    )
    mask = optim.decay_mask({"backbone": vit["params"], "head": head["params"]})
    decayed = {
        "backbone/cls_token": True,
        "backbone/pos_embed": True,
        "backbone/patch_embed/kernel": True,
        "backbone/patch_embed/bias": False,
        "backbone/blocks_1/attn/qkv/kernel": True,
        "backbone/blocks_1/attn/qkv/bias": False,
        "backbone/blocks_0/norm1/scale": False,
        "backbone/blocks_0/norm2/bias": False,
        "backbone/blocks_0/mlp/fc2/kernel": True,
        "backbone/norm/scale": False,
        "head/mlp_1/kernel": True,
        "head/mlp_1/bias": False,
        "head/last_layer/kernel": True,
        "head/last_layer/scale": False,
    }
    for path, want in decayed.items():
        assert _leaf(mask, path) is want, path
    n_decayed = sum(jax.tree.leaves(mask))
    n_kernels = sum(1 for p, _ in jax.tree_util.tree_leaves_with_path(mask) if "kernel" in str(p))
    assert n_decayed == n_kernels + 2  # every kernel, plus cls_token and pos_embed
    labels = optim.last_layer_labels({"head": head["params"]})
    assert _leaf(labels, "head/last_layer/kernel") == "last_layer"
    assert _leaf(labels, "head/mlp_0/kernel") == "default"


def test_scheduled_weight_decay_only_on_masked_leaves():
    params = _params()
    wd = lambda step: 0.1 * (step + 1.0)  # 0.1 at step 0, 0.2 at step 1
    tx = optim.dino_optimizer(0.5, wd, clip_norm=3.0)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)  # Adam's part of the update is exactly 0
    mask = optim.decay_mask(params)
    update = jax.jit(tx.update)
    for step, wd_t in ((0, 0.1), (1, 0.2)):
        updates, state = update(zeros, state, params)
        assert float(state.hyperparams["weight_decay"]) == pytest.approx(wd_t)
        for p, u, m in zip(
            jax.tree.leaves(params), jax.tree.leaves(updates), jax.tree.leaves(mask), strict=True
        ):
            expected = -0.5 * wd_t * np.asarray(p) if m else np.zeros(p.shape)
            np.testing.assert_allclose(u, expected, rtol=1e-6, err_msg=f"step {step}")


def _adam_mu(state, label):
    """Adam first moments of the 'default' or 'last_layer' group, as a flat list."""
    group = state.inner_state[-1].inner_states[label]
    ((_, mu),) = optax.tree_utils.tree_get_all_with_path(group, "mu")
    return jax.tree.leaves(mu)


def test_global_norm_clipping():
    params = _params()
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * 10), params)
    norm = float(optax.tree.norm(grads))
    assert norm > 3.0
    tx = optim.dino_optimizer(1e-3, 0.0, clip_norm=3.0, clip_mode="global")
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    # After one step mu = (1 - b1) * clipped gradient.
    mu = _adam_mu(state, "default") + _adam_mu(state, "last_layer")
    clipped_norm = float(np.sqrt(sum(np.sum(np.square(m / 0.1)) for m in mu)))
    np.testing.assert_allclose(clipped_norm, 3.0, rtol=1e-5)
    g_flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
    m_flat = np.concatenate([np.ravel(m) for m in mu]) / 0.1
    assert np.sort(np.abs(m_flat)) == pytest.approx(np.sort(np.abs(g_flat)) * 3.0 / norm, 1e-5)


def test_last_layer_frozen_for_first_epoch_then_fresh_adam():
    params = _params()
    sched = DinoSchedules.create(
        epochs=2, steps_per_epoch=2, global_batch=256, warmup_epochs=0, freeze_last_layer=1
    )
    assert sched.freeze_last_layer_steps == 2
    tx = optim.optimizer_from_schedules(sched)
    state = tx.init(params)
    rng = np.random.default_rng(2)
    # Small gradients (global norm < 3) so clipping does not interfere...
    grads = jax.tree.map(lambda p: jnp.asarray(rng.uniform(-0.1, 0.1, p.shape)), params)
    # ...except a huge last-layer gradient while frozen: it must not shrink the others.
    big = jax.tree.map(lambda g: g, grads)
    big["head"]["last_layer"] = jax.tree.map(lambda g: g * 1e4, grads["head"]["last_layer"])
    update = jax.jit(tx.update)
    for step in range(2):
        updates, state = update(big, state, params)
        assert bool(state.hyperparams["last_layer_frozen"])
        for u in jax.tree.leaves(updates["head"]["last_layer"]):
            np.testing.assert_array_equal(u, 0.0)
        u = np.asarray(updates["head"]["mlp_0"]["kernel"])
        assert np.abs(u).min() > 0
        if step == 0:  # first Adam step: -lr * g / (|g| + eps) - lr * wd * p, unclipped
            lr0, wd0 = sched.lr.numpy(0), sched.weight_decay.numpy(0)
            g, p = grads["head"]["mlp_0"]["kernel"], params["head"]["mlp_0"]["kernel"]
            np.testing.assert_allclose(u, -lr0 * (g / (np.abs(g) + 1e-8) + wd0 * p), rtol=1e-4)
    updates, state = update(grads, state, params)  # step 2: unfrozen
    assert not bool(state.hyperparams["last_layer_frozen"])
    # The last layer now takes a fresh AdamW first step with the step-2 lr and wd.
    fresh = optax.adamw(sched.lr.numpy(2), weight_decay=sched.weight_decay.numpy(2))
    ref, _ = fresh.update(
        grads["head"]["last_layer"],
        fresh.init(params["head"]["last_layer"]),
        params["head"]["last_layer"],
    )
    ref["scale"] = (
        -sched.lr.numpy(2)
        * grads["head"]["last_layer"]["scale"]
        / (np.abs(grads["head"]["last_layer"]["scale"]) + 1e-8)
    )  # 1-D: no weight decay
    for k in ("kernel", "scale"):
        np.testing.assert_allclose(updates["head"]["last_layer"][k], ref[k], rtol=1e-4)


def test_bad_freeze_raises():
    with pytest.raises(ValueError, match="freeze"):
        optim.dino_optimizer(1e-3, 0.04, freeze_last_layer_steps=-1)


def test_build_optimizer_from_config():
    import ml_collections

    config = ml_collections.ConfigDict(
        {
            "num_epochs": 2.0,
            "data": {"batch_size": 128},
            "optim": {"lr": 1e-3, "warmup_epochs": 0.0, "clip_grad": 0.0, "freeze_last_layer": 0.5,
                      "min_lr": 1e-6, "weight_decay": 0.04, "weight_decay_end": 0.4,
                      "clip_mode": "per_param"},
            "dino": {"momentum_teacher": 0.996, "warmup_teacher_temp": 0.04, "teacher_temp": 0.07,
                     "warmup_teacher_temp_epochs": 30.0},
        }
    )  # fmt: skip
    sched = DinoSchedules.from_config(config, steps_per_epoch=4)
    assert sched.freeze_last_layer_steps == 2 and sched.total_steps == 8
    tx = optim.build_optimizer(config, sched)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 100.0), params)  # no clipping: clip_grad 0
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    mu = _adam_mu(state, "default")
    np.testing.assert_allclose(np.concatenate([np.ravel(m) for m in mu]), 10.0, rtol=1e-6)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(5e-4)


def test_per_param_clipping_is_the_default_and_matches_official_rule():
    params = _params()
    rng = np.random.default_rng(4)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape)), params)
    grads["head"]["mlp_0"]["kernel"] = grads["head"]["mlp_0"]["kernel"] * 50.0  # norm >> 3
    tx = optim.dino_optimizer(1e-3, 0.0, clip_norm=3.0)  # default clip_mode: per_param
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    mu = jax.tree.map(lambda m: np.asarray(m) / 0.1, _adam_mu_tree(state))

    def official(g):  # utils.clip_gradients of official DINO, in float64
        g = np.asarray(g, np.float64)
        coef = 3.0 / (np.linalg.norm(g.ravel()) + 1e-6)
        return g * coef if coef < 1 else g

    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        m = mu
        for key in path:
            m = m[key.key]
        np.testing.assert_allclose(m, official(g), rtol=1e-5, atol=1e-7)
    big = np.asarray(mu["head"]["mlp_0"]["kernel"])
    assert np.linalg.norm(big) == pytest.approx(3.0, rel=1e-5)
    with pytest.raises(ValueError, match="clip_mode"):
        optim.dino_optimizer(1e-3, 0.0, clip_mode="norm")


def _adam_mu_tree(state):
    """Adam first moments of both groups merged back into the parameter tree."""
    trees = []
    for label in ("default", "last_layer"):
        group = state.inner_state[-1].inner_states[label]
        ((_, mu),) = optax.tree_utils.tree_get_all_with_path(group, "mu")
        trees.append(mu)
    masked = lambda x: isinstance(x, optax.MaskedNode)
    return jax.tree.map(lambda a, b: b if masked(a) else a, *trees, is_leaf=masked)
