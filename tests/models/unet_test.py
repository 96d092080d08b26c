"""U-Net family: exact parameter counts from hand-derived formulas, shapes, Swin masks."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinolg_jax.models import segmenters, swin_unet
from dinolg_jax.models.unet import AttentionUNet, UNet


def _count(model, size: int) -> tuple[int, tuple[int, ...]]:
    """Parameter count and output shape, through eval_shape (no compute)."""
    x = jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables)), out.shape


def _conv(k: int, cin: int, cout: int, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def _double_conv(cin: int, cout: int) -> int:
    # two 3x3 convs with bias, each followed by a GroupNorm (scale + bias per channel)
    return _conv(3, cin, cout) + 2 * cout + _conv(3, cout, cout) + 2 * cout


def _unet_count(f: int, depth: int, classes: int, attention: bool) -> int:
    n = _double_conv(1, f)
    for i in range(1, depth + 1):
        n += _double_conv(f * 2 ** (i - 1), f * 2**i)  # encoder levels + bottleneck
    for i in reversed(range(depth)):
        c = f * 2**i
        n += _conv(2, 2 * c, c)  # 2x2 transposed conv
        if attention:
            n += _conv(1, c, c // 2, bias=False) + _conv(1, c, c // 2) + _conv(1, c // 2, 1)
        n += _double_conv(2 * c, c)
    return n + _conv(1, f, classes)


@pytest.mark.parametrize("model_cls", [UNet, AttentionUNet])
def test_unet_param_count_matches_formula_at_two_sizes(model_cls):
    attention = model_cls is AttentionUNet
    for size in (32, 48):
        n, shape = _count(model_cls(filters=8), size)
        assert n == _unet_count(8, 4, 5, attention)
        assert shape == (2, size, size, 5)
    # Depth 3 at another filter count: the formula is not tuned to one configuration.
    n, _ = _count(model_cls(filters=4, depth=3, num_classes=3), 24)
    assert n == _unet_count(4, 3, 3, attention)


def test_unet_paper_size_count():
    # 64 filters (the paper's Table 4): a plain U-Net of ~31 M parameters.
    n, _ = _count(UNet(), 512)
    assert n == _unet_count(64, 4, 5, False)
    assert 31_000_000 < n < 31_100_000


def _swin_count(c: int, depths, heads, window: int, patch: int, classes: int) -> int:
    def block(d, h):
        ln = 2 * d
        attn = (d * 3 * d + 3 * d) + (2 * window - 1) ** 2 * h + (d * d + d)
        mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
        return 2 * ln + attn + mlp

    s = len(depths)
    n = patch * patch * c + c + 2 * c  # patch embed conv + LN
    for i in range(s):
        d = c * 2**i
        n += depths[i] * block(d, heads[i])
        if i < s - 1:
            n += 2 * 4 * d + 4 * d * 2 * d  # merging: LN(4d) + Linear(4d->2d, no bias)
    n += 2 * c * 2 ** (s - 1)  # bottleneck LN
    for i in reversed(range(s - 1)):
        d = c * 2**i
        n += (2 * d) * 4 * d + 2 * d  # expand: Linear(2d -> 4d, no bias) + LN(d)
        n += 2 * d * d + d  # concat back Linear(2d -> d)
        n += depths[i] * block(d, heads[i])
    n += 2 * c  # decoder LN
    n += c * patch * patch * c + 2 * c  # final x4 expand + LN
    return n + c * classes  # 1x1 head, no bias


def test_swin_unet_param_count_matches_formula_at_two_sizes():
    kw = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window=2)
    for size in (64, 128):
        n, shape = _count(swin_unet.SwinUNet(**kw), size)
        assert n == _swin_count(8, (2, 2, 2, 2), (1, 2, 2, 4), 2, 4, 5)
        assert shape == (2, size, size, 5)


def _vit_count(d: int, depth: int, patch: int, grid: int) -> int:
    block = (
        2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    )
    return patch * patch * d + d + d + (1 + grid * grid) * d + depth * block + 2 * d


def test_vit_unet_param_count_matches_formula_at_two_sizes():
    f, d = 4, 32  # decoder filters; mu width
    want = _vit_count(d, 2, 8, 4)  # mu/8 encoder, 32 px reference grid 4x4
    want += _conv(1, d, 8 * f)  # token projection
    for level in range(3):  # image stem at 1, 1/2, 1/4
        want += _double_conv(1 if level == 0 else f * 2 ** (level - 1), f * 2**level)
    for level in range(3):  # decoder: 2x2 transposed conv + DoubleConv on concat(stem, up)
        c = f * 2**level
        want += _conv(2, 2 * c, c) + _double_conv(2 * c, c)
    want += _conv(1, f, 5)
    for size in (32, 48):
        model = segmenters.build_segmenter(
            "vit_unet", variant="mu/8", decoder_filters=f, ref_image_size=32
        )
        n, shape = _count(model, size)
        assert n == want and shape == (2, size, size, 5)


def test_registry_builds_every_model_by_name():
    assert set(segmenters.SEGMENTERS) == {"unet", "attention_unet", "swin_unet", "vit_unet"}
    assert segmenters.build_segmenter("attention_unet", filters=4).attention
    assert segmenters.build_segmenter("swin_unet", depths=[2, 2]).depths == (2, 2)
    with pytest.raises(ValueError, match="unknown segmentation model"):
        segmenters.build_segmenter("segformer")
    with pytest.raises(ValueError, match="no field"):
        segmenters.build_segmenter("unet", embed_dim=8)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="divisible by 16"):
        _count(UNet(filters=4), 40)
    with pytest.raises(ValueError, match="input channel"):
        UNet(filters=4).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="divisible by 32"):
        _count(swin_unet.SwinUNet(embed_dim=8, num_heads=(1, 1, 1, 1), window=2), 48)
    with pytest.raises(ValueError, match="cannot be tiled"):
        swin_unet.stage_window(12, 12, 8)


@pytest.mark.parametrize("h,w,window,shift", [(8, 8, 4, 2), (12, 8, 4, 2), (6, 6, 3, 1)])
def test_shifted_window_mask_never_crosses_a_boundary(h, w, window, shift):
    mask = swin_unet.attention_mask(h, w, window, shift)
    # Independent reference: token at rolled position (r, c) came from original position
    # ((r + shift) % h, (c + shift) % w). Two tokens in one rolled window are neighbours in
    # the original image iff their original coordinates differ by < window on both axes;
    # a pair that wrapped around differs by >= h - window (or w - window).
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    orig = np.stack([(rows + shift) % h, (cols + shift) % w], -1)
    win = np.asarray(swin_unet.window_partition(jnp.asarray(orig)[None], window))
    win = win.reshape(-1, window * window, 2)
    assert mask.shape == win.shape[:1] + (window * window,) * 2
    for k, i, j in itertools.product(
        range(win.shape[0]), range(window * window), range(window * window)
    ):
        near = np.all(np.abs(win[k, i] - win[k, j]) < window)
        assert mask[k, i, j] == near, (k, i, j)
    # Windows away from the wrap seam are unmasked; the corner window has 4 regions.
    assert mask[0].all()
    assert len(np.unique(mask[-1], axis=0)) == 4
    # No shift: everything allowed.
    assert swin_unet.attention_mask(h, w, window, 0).all()


def test_masked_attention_ignores_tokens_across_the_seam():
    # Changing a token that the mask forbids must not change another token's output.
    attn = swin_unet.WindowAttention(dim=4, num_heads=1, window=2)
    mask = swin_unet.attention_mask(4, 4, 2, 1)  # [4, 4, 4]
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 4, 4)), jnp.float32)
    apply = jax.jit(lambda p, v: attn.apply(p, v, mask))
    params = jax.jit(lambda k: attn.init(k, x, mask))(jax.random.key(2, impl="rbg"))
    forbidden = np.argwhere(~mask[3])[0]  # (query i, key j) in the corner window
    y0 = apply(params, x)
    y1 = apply(params, x.at[0, 3, forbidden[1]].add(10.0))
    np.testing.assert_allclose(y0[0, 3, forbidden[0]], y1[0, 3, forbidden[0]], atol=1e-6)
    assert not np.allclose(y0[0, 3, forbidden[1]], y1[0, 3, forbidden[1]])


def test_window_partition_round_trip():
    x = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
    win = swin_unet.window_partition(x, 4)
    assert win.shape == (2, 6, 16, 3)
    np.testing.assert_array_equal(win[1, 1, 5], x[1, 1, 5])  # window 1 = rows 0-3, cols 4-7
    np.testing.assert_array_equal(swin_unet.window_reverse(win, 4, 8, 12), x)


def test_prior_bias_init_gives_the_background_prior():
    from dinolg_jax.models.unet import prior_bias_init

    bias = prior_bias_init(0.999)(None, (5,))
    np.testing.assert_allclose(jax.nn.softmax(bias)[0], 0.999, rtol=1e-6)
    np.testing.assert_array_equal(bias[1:], 0.0)
    assert not np.any(prior_bias_init(None)(None, (5,)))
    with pytest.raises(ValueError, match="background_prior"):
        prior_bias_init(1.0)
    # Swin's head gains a bias only with a prior (Swin-Unet's head has none).
    kw = dict(embed_dim=8, num_heads=(1, 2, 2, 4), window=2)
    plain, _ = _count(swin_unet.SwinUNet(**kw), 64)
    with_prior, _ = _count(swin_unet.SwinUNet(**kw, background_prior=0.99), 64)
    assert with_prior == plain + 5
