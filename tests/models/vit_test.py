"""ViT: forward pass against an independent numpy reference, parameter counts, options."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from vit_reference import flax_to_torch_names, reference_vit, torch_bicubic_loop

from dinolg_jax.models import vit as vit_lib
from dinolg_jax.models.vit import ViT, bicubic_matrix, decode_variant

# "mu/8" with a 32 px reference grid (G = 4) keeps everything tiny.
MU = {"variant": "mu/8", "ref_image_size": 32}
HEADS = 2


@functools.cache
def _params():
    """Flax params of mu/8 with random O(1) values (so attention is far from uniform)."""
    variables = jax.jit(ViT(**MU).init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    leaves, treedef = jax.tree.flatten(variables["params"])
    rng = np.random.default_rng(1)
    leaves = [(rng.standard_normal(x.shape) * 0.3).astype(np.float32) for x in leaves]
    return jax.tree.unflatten(treedef, leaves)


def _images(shape, seed=2):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@functools.cache
def _apply(**fields):
    model = ViT(**(MU | fields))
    return jax.jit(lambda p, x: model.apply({"params": p}, x))


@pytest.mark.parametrize("hw", [(32, 32), (48, 24)])
def test_forward_matches_numpy_reference(hw):
    x = _images((2, *hw, 1))
    cls, aux = _apply(n_last_blocks=2)(_params(), x)
    ref = reference_vit(flax_to_torch_names(_params()), x, patch=8, heads=HEADS)
    np.testing.assert_allclose(aux["tokens"], ref["tokens"], atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(cls, ref["tokens"][:, 0], atol=2e-5, rtol=2e-5)
    # cls_per_block: CLS of each of the last 2 blocks through the final norm.
    p = _params()["norm"]
    for i, out in enumerate(ref["block_out"]):
        c = out[:, 0]
        c = (c - c.mean(-1, keepdims=True)) / np.sqrt(c.var(-1, keepdims=True) + 1e-6)
        c = c * p["scale"] + p["bias"]
        np.testing.assert_allclose(aux["cls_per_block"][:, i], c, atol=2e-5, rtol=2e-5)


def test_bicubic_matrix_matches_loop_and_identity():
    for n_in, n_out in [(28, 12), (4, 6), (4, 3), (14, 14), (5, 1)]:
        m = bicubic_matrix(n_in, n_out)
        np.testing.assert_allclose(m, torch_bicubic_loop(n_in, n_out), atol=1e-12)
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(bicubic_matrix(28, 28), np.eye(28))
    # Hand value: 2 -> 4 upsampling, output 1 sits at source 0.25: taps at -1, 0, 1, 2
    # with distances 1.25, 0.25, 0.75, 1.75 (a = -0.75), the -1 tap clamped onto 0.
    k = torch_bicubic_loop(2, 4)
    w = {
        1.25: -0.75 * 1.25**3 + 3.75 * 1.25**2 - 6 * 1.25 + 3,
        0.25: 1.25 * 0.25**3 - 2.25 * 0.25**2 + 1,
        0.75: 1.25 * 0.75**3 - 2.25 * 0.75**2 + 1,
        1.75: -0.75 * 1.75**3 + 3.75 * 1.75**2 - 6 * 1.75 + 3,
    }
    np.testing.assert_allclose(k[1], [w[1.25] + w[0.25], w[0.75] + w[1.75]], atol=1e-12)


def test_pos_embed_identity_at_reference_size():
    grid = jnp.asarray(_images((4, 4, 8)))
    assert vit_lib.interpolate_pos_grid(grid, (4, 4)) is grid


def _count_by_formula(width, depth, patch, chans, grid):
    patch_embed = patch * patch * chans * width + width
    block = 2 * 2 * width  # two LayerNorms
    block += width * 3 * width + 3 * width  # qkv
    block += width * width + width  # proj
    block += width * 4 * width + 4 * width + 4 * width * width + width  # MLP
    return patch_embed + width + (1 + grid * grid) * width + depth * block + 2 * width


@pytest.mark.parametrize(
    "variant,chans,expected",
    [
        ("S/16", 3, 21_665_664),  # the published ViT-S/16 count (3 channels)
        ("S/8", 1, _count_by_formula(384, 12, 8, 1, 28)),
        ("B/8", 1, _count_by_formula(768, 12, 8, 1, 28)),
    ],
)
def test_param_counts(variant, chans, expected):
    shapes = jax.eval_shape(ViT(variant).init, jax.random.key(0), jnp.zeros((1, 224, 224, chans)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == expected


def test_attention_maps_rows_sum_to_one_and_match_reference():
    x = _images((2, 40, 32, 1))
    cls_a, aux = _apply(return_attention=True)(_params(), x)
    cls, _ = _apply()(_params(), x)
    att = np.asarray(aux["attention"])
    assert att.shape == (2, HEADS, 21, 21) and att.dtype == np.float32
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
    ref = reference_vit(flax_to_torch_names(_params()), x, patch=8, heads=HEADS)
    np.testing.assert_allclose(att, ref["attention"], atol=1e-5)
    np.testing.assert_allclose(cls_a, cls, atol=1e-5)  # explicit path == fused path


def test_padding_tokens_equals_no_padding():
    x = _images((2, 32, 32, 1))  # 17 tokens -> padded to 32
    _, aux = _apply()(_params(), x)
    _, aux_p = _apply(pad_tokens_to=16)(_params(), x)
    assert aux_p["tokens"].shape == (2, 17, 32)
    np.testing.assert_allclose(aux_p["tokens"], aux["tokens"], atol=1e-6, rtol=1e-6)


def test_bf16_compute_close_to_f32_and_params_stay_f32():
    x = _images((2, 32, 32, 1))
    cls, _ = _apply()(_params(), x)
    cls16, aux16 = _apply(dtype=jnp.bfloat16)(_params(), x)
    assert cls16.dtype == jnp.bfloat16 and aux16["tokens"].dtype == jnp.bfloat16
    err = np.abs(np.asarray(cls16, np.float32) - np.asarray(cls))
    assert err.max() < 0.1 and err.mean() < 0.03, (err.max(), err.mean())
    shapes = jax.eval_shape(
        ViT(dtype=jnp.bfloat16, **MU).init, jax.random.key(0), jnp.zeros((1, 32, 32, 1))
    )
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}


def test_stochastic_depth_drops_whole_branches_per_sample():
    x = _images((8, 32, 32, 1))
    params = _params()
    model = ViT(drop_path_rate=0.5, **MU)  # block 0: rate 0, block 1: rate 0.5
    run = jax.jit(lambda k: model.apply({"params": params}, x, train=True, rngs={"dropout": k}))
    cls_a, _ = run(jax.random.key(5))
    cls_b, _ = run(jax.random.key(5))
    np.testing.assert_array_equal(cls_a, cls_b)  # same rng -> same output
    cls_eval, _ = _apply(drop_path_rate=0.5)(params, x)
    cls_plain, _ = _apply()(params, x)
    np.testing.assert_array_equal(cls_eval, cls_plain)  # train=False: no dropping
    sd = flax_to_torch_names(params)
    one = np.ones(1)
    combos = {}
    for sa in (0.0, 2.0):
        for sm in (0.0, 2.0):
            scale = [(one, one), (np.array([sa]), np.array([sm]))]
            combos[(sa, sm)] = np.stack(
                [
                    reference_vit(sd, x[i : i + 1], patch=8, heads=HEADS, branch_scale=scale)[
                        "tokens"
                    ][0, 0]
                    for i in range(len(x))
                ]
            )
    seen = set()
    for i in range(len(x)):
        match = [c for c, ref in combos.items() if np.allclose(cls_a[i], ref[i], atol=1e-4)]
        assert len(match) == 1, f"sample {i} matches {match}"
        seen.add(match[0])
    assert len(seen) >= 2  # branches really are dropped for some samples and not others


def test_remat_same_output_and_gradient():
    x = _images((2, 32, 32, 1))

    def loss(p, **fields):
        cls, _ = ViT(**(MU | fields)).apply({"params": p}, x)
        return jnp.sum(cls**2)

    g0 = jax.jit(jax.grad(loss))(_params())
    g1 = jax.jit(jax.grad(functools.partial(loss, remat=True)))(_params())
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="variant"):
        decode_variant("X/8")
    with pytest.raises(ValueError, match="variant"):
        decode_variant("S")
    assert decode_variant("B/16") == vit_lib.VitSpec(768, 12, 12, 16)
    with pytest.raises(ValueError, match="multiple of the patch"):
        ViT(**MU).init(jax.random.key(0), jnp.zeros((1, 30, 32, 1)))
    with pytest.raises(ValueError, match="drop_path_rate"):
        ViT(drop_path_rate=1.0, **MU).init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
