"""DINO head: parameter count, unit-norm bottleneck, weight-norm last layer, numpy forward."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from dinolg_jax.models.heads import DINOHead, l2_normalize

SMALL = {"out_dim": 24, "hidden_dim": 16, "bottleneck_dim": 8}


def _init(head, d=12, seed=0):
    return jax.jit(head.init)(jax.random.key(seed), jnp.zeros((1, d)))["params"]


def _gelu(x):
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def test_param_count_formula_paper_size():
    d, hidden, bottleneck, out = 384, 2048, 256, 65536
    mlp = (d * hidden + hidden) + (hidden * hidden + hidden) + (hidden * bottleneck + bottleneck)
    for norm_last, last in ((True, bottleneck * out), (False, bottleneck * out + out)):
        shapes = jax.eval_shape(
            DINOHead(norm_last_layer=norm_last).init, jax.random.key(0), jnp.zeros((1, d))
        )
        assert sum(x.size for x in jax.tree.leaves(shapes)) == mlp + last
        assert set(shapes["params"]) == {"mlp_0", "mlp_1", "mlp_2", "last_layer"}


def test_forward_matches_numpy_and_weight_norm():
    head = DINOHead(norm_last_layer=False, **SMALL)
    params = _init(head)
    rng = np.random.default_rng(0)
    # Non-trivial scale g so the weight-norm product is exercised.
    params["last_layer"]["scale"] = jnp.asarray(rng.uniform(0.5, 2.0, 24), jnp.float32)
    x = rng.standard_normal((5, 12)).astype(np.float32)
    out = np.asarray(jax.jit(head.apply)({"params": params}, x))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = _gelu(x @ p["mlp_0"]["kernel"] + p["mlp_0"]["bias"])
    h = _gelu(h @ p["mlp_1"]["kernel"] + p["mlp_1"]["bias"])
    h = h @ p["mlp_2"]["kernel"] + p["mlp_2"]["bias"]
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0)
    v = p["last_layer"]["kernel"]
    expected = np.zeros((5, 24))
    for j in range(24):  # unit by unit: g_j * <z, v_j> / ||v_j||
        expected[:, j] = p["last_layer"]["scale"][j] * (z @ v[:, j]) / np.linalg.norm(v[:, j])
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_norm_last_layer_gives_cosine_logits_scale_invariant_in_v():
    head = DINOHead(**SMALL)
    params = _init(head)
    assert set(params["last_layer"]) == {"kernel"}  # g fixed to 1: not a parameter
    x = np.random.default_rng(1).standard_normal((6, 12)).astype(np.float32)
    apply = jax.jit(head.apply)
    out = np.asarray(apply({"params": params}, x))
    assert np.all(np.abs(out) <= 1.0 + 1e-6)  # unit input . unit prototype
    # Rescaling each prototype v_j leaves the output unchanged (weight norm).
    scaled = jax.tree.map(lambda a: a, params)
    col_scale = np.linspace(0.1, 10.0, 24, dtype=np.float32)
    scaled["last_layer"]["kernel"] = params["last_layer"]["kernel"] * col_scale
    np.testing.assert_allclose(apply({"params": scaled}, x), out, atol=1e-5)
    # ...while rescaling them unevenly inside a column does change it.
    skewed = jax.tree.map(lambda a: a, params)
    skewed["last_layer"]["kernel"] = params["last_layer"]["kernel"].at[0].multiply(5.0)
    assert np.abs(np.asarray(apply({"params": skewed}, x)) - out).max() > 1e-3


def test_n_layers_one_and_bad_input():
    head = DINOHead(n_layers=1, **SMALL)
    params = _init(head)
    assert params["mlp_0"]["kernel"].shape == (12, 8) and "mlp_1" not in params
    with pytest.raises(ValueError, match="n_layers"):
        _init(DINOHead(n_layers=0, **SMALL))
    with pytest.raises(ValueError, match="features"):
        DINOHead(**SMALL).init(jax.random.key(0), jnp.zeros((2, 3, 12)))


def test_l2_normalize():
    x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]], jnp.bfloat16)
    y = l2_normalize(x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0]])


def test_bf16_head_close_to_f32():
    params = _init(DINOHead(**SMALL))
    x = np.random.default_rng(2).standard_normal((4, 12)).astype(np.float32)
    out32 = jax.jit(DINOHead(**SMALL).apply)({"params": params}, x)
    out16 = jax.jit(DINOHead(dtype=jnp.bfloat16, **SMALL).apply)({"params": params}, x)
    assert out16.dtype == jnp.float32  # the logits are float32 under bf16 compute
    np.testing.assert_allclose(np.asarray(out16), out32, atol=2e-2)


def test_last_layer_init_is_torch_linear_default_uniform():
    # PyTorch nn.Linear: kaiming_uniform_(a=sqrt(5)) -> U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    head = DINOHead(out_dim=4096, hidden_dim=32, bottleneck_dim=64)
    v = np.asarray(_init(head, d=16)["last_layer"]["kernel"], np.float64)  # [64, 4096]
    bound = 1 / math.sqrt(64)
    assert np.abs(v).max() <= bound
    assert np.abs(v).max() > 0.99 * bound  # fills the interval
    assert v.std() == pytest.approx(bound / math.sqrt(3), rel=0.01)  # uniform's std
    # each prototype's direction norm ~ sqrt(1/3): about twice a truncated normal 0.02's
    col = np.linalg.norm(v, axis=0)
    assert col.mean() == pytest.approx(math.sqrt(1 / 3), rel=0.02)
    mlp = np.asarray(_init(head, d=16)["mlp_0"]["kernel"])
    assert mlp.std() < 0.021  # the MLP keeps the truncated normal of std 0.02


def test_bf16_head_computes_the_last_layer_and_logits_in_float32():
    kw = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}
    head16 = DINOHead(dtype=jnp.bfloat16, **kw)
    params = _init(head16, d=8)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 8)), jnp.float32)
    out = head16.apply({"params": params}, x)
    assert out.dtype == jnp.float32
    # Reference: the bf16 MLP, then float64 numpy for the normalisation and last layer.
    h = x.astype(jnp.bfloat16)
    for i in range(3):
        p = params[f"mlp_{i}"]
        h = h @ p["kernel"].astype(jnp.bfloat16) + p["bias"].astype(jnp.bfloat16)
        if i < 2:
            h = jax.nn.gelu(h, approximate=False)
    h = np.asarray(h, np.float64)
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    v = np.asarray(params["last_layer"]["kernel"], np.float64)
    ref = h @ (v / np.linalg.norm(v, axis=0, keepdims=True))
    # float32 accuracy on the logits (a bf16 last layer is off by ~4e-3)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5)
