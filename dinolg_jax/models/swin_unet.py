"""Swin U-Net (Cao et al. 2021) for per-vessel calcium segmentation (Flax Linen).

A Swin Transformer encoder (Liu et al. 2021: window attention, alternately shifted
windows with attention masks, relative position bias, patch merging), a symmetric
decoder of Swin blocks with patch expanding, and skip connections, as in Swin-Unet:

    patch embed (p x p conv, 1 -> C) + LN
    stage i = 0..S-1:  skip_i = x;  depths[i] Swin blocks at C*2^i;  patch merging (i < S-1)
    LN (bottleneck)
    stage i = S-2..0:  patch expand (2x, C*2^(i+1) -> C*2^i);  concat skip_i;  Linear(2d -> d);
                       depths[i] Swin blocks
    LN;  final patch expand (p x, C -> C) + LN;  1x1 conv (C -> classes; no bias unless
    ``background_prior`` is set)

Input: [B, H, W, 1] with H and W divisible by ``patch * 2**(S-1)`` (32 with the defaults);
at each stage the window is ``min(window, H_i, W_i)`` and must divide H_i and W_i; when the
window covers the whole side the shift is 0 (as in Swin). ``embed_dim`` plays the role of
the paper's "64 initial filters".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dinolg_jax.models.unet import NUM_CLASSES, check_input, prior_bias_init


def window_partition(x: jnp.ndarray, window: int) -> jnp.ndarray:
    """[B, H, W, C] -> [B, nW, window*window, C], windows in row-major order (numpy or jax)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: jnp.ndarray, window: int, h: int, w: int) -> jnp.ndarray:
    """[B, nW, window*window, C] -> [B, H, W, C]; inverse of window_partition."""
    b, _, _, c = windows.shape
    x = windows.reshape(b, h // window, w // window, window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def attention_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
    """Which token pairs of each shifted window may attend to each other.

    After the feature map is rolled by ``-shift`` on both axes, windows at the bottom and
    right edges hold tokens from opposite sides of the image. Tokens are labelled by the
    region (of the 3x3 split at ``-window`` and ``-shift``) they came from; only tokens of
    one region may attend to each other.

    Args:
      h, w: feature map size in tokens; divisible by ``window``.
      window: window side in tokens.
      shift: cyclic shift in tokens (0 for regular windows: every pair allowed).

    Returns:
      bool [nW, window*window, window*window]; True where attention is allowed.
    """
    regions = np.zeros((h, w), np.int32)
    if shift > 0:
        cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        label = 0
        for rows in cuts:
            for cols in cuts:
                regions[rows, cols] = label
                label += 1
    win = window_partition(regions[None, :, :, None], window)[0, ..., 0]  # numpy throughout
    return win[:, :, None] == win[:, None, :]


def relative_position_index(window: int) -> np.ndarray:
    """int32 [N, N] (N = window**2): index into the (2*window-1)**2 bias table."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N] in [0, 2w-2]
    return (rel[0] * (2 * window - 1) + rel[1]).astype(np.int32)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with relative position bias and a mask."""

    dim: int  # token width
    num_heads: int  # attention heads
    window: int  # window side in tokens
    dtype: Any = jnp.float32  # compute dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: np.ndarray | None) -> jnp.ndarray:
        """x [B, nW, N, D], mask bool [nW, N, N] or None -> [B, nW, N, D]."""
        b, nw, n, d = x.shape
        hd = d // self.num_heads
        qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, nw, n, 3, self.num_heads, hd)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # [B, nW, N, H, hd]
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q * hd**-0.5, k).astype(jnp.float32)
        table = self.param(
            "relative_position_bias",
            nn.initializers.truncated_normal(0.02),
            ((2 * self.window - 1) ** 2, self.num_heads),
        )
        bias = table[relative_position_index(self.window)]  # [N, N, H]
        logits = logits + bias.transpose(2, 0, 1)[None, None]
        if mask is not None:
            logits = jnp.where(jnp.asarray(mask)[None, :, None], logits, -1e9)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", probs, v).reshape(b, nw, n, d)
        return nn.Dense(d, dtype=self.dtype, name="proj")(out)


class SwinBlock(nn.Module):
    """Pre-norm Swin Transformer block: (shifted) window attention, then an MLP."""

    dim: int  # token width
    num_heads: int  # attention heads
    window: int  # window side in tokens
    shift: int  # cyclic shift in tokens (0: regular windows)
    mlp_ratio: float = 4.0  # MLP hidden width / dim
    dtype: Any = jnp.float32  # compute dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x [B, H, W, D] -> [B, H, W, D]."""
        _, h, w, _ = x.shape
        y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
        if self.shift:
            y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
        mask = attention_mask(h, w, self.window, self.shift) if self.shift else None
        y = window_partition(y, self.window)
        y = WindowAttention(self.dim, self.num_heads, self.window, self.dtype)(y, mask)
        y = window_reverse(y, self.window, h, w)
        if self.shift:
            y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
        x = x + y
        y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
        y = nn.Dense(int(self.dim * self.mlp_ratio), dtype=self.dtype)(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(self.dim, dtype=self.dtype)(y)
        return x + y


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (4D) -> LayerNorm -> Linear(4D -> 2D, no bias)."""

    dtype: Any = jnp.float32  # compute dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x [B, H, W, D] -> [B, H/2, W/2, 2D]."""
        b, h, w, d = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, d).transpose(0, 1, 3, 4, 2, 5)
        x = x.reshape(b, h // 2, w // 2, 4 * d)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
        return nn.Dense(2 * d, use_bias=False, dtype=self.dtype)(x)


class PatchExpand(nn.Module):
    """Linear(D -> s*s*D_out, no bias) -> pixel shuffle by s -> LayerNorm(D_out)."""

    scale: int  # upsampling factor s
    out_dim: int  # output width D_out
    dtype: Any = jnp.float32  # compute dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x [B, H, W, D] -> [B, sH, sW, D_out]."""
        b, h, w, _ = x.shape
        s = self.scale
        x = nn.Dense(s * s * self.out_dim, use_bias=False, dtype=self.dtype)(x)
        x = x.reshape(b, h, w, s, s, self.out_dim).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, h * s, w * s, self.out_dim)
        return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)


def stage_window(h: int, w: int, window: int) -> tuple[int, int]:
    """(window, shift) used at a stage of h x w tokens; raises if the window does not tile."""
    win = min(window, h, w)
    if h % win or w % win:
        raise ValueError(f"a {h}x{w} token map cannot be tiled by {win}x{win} windows")
    shift = 0 if min(h, w) <= window else win // 2
    return win, shift


class SwinStage(nn.Module):
    """``depth`` Swin blocks, alternating regular and shifted windows."""

    dim: int  # token width
    depth: int  # number of blocks
    num_heads: int  # attention heads
    window: int  # requested window side (clipped to the map)
    dtype: Any = jnp.float32  # compute dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x [B, H, W, D] -> [B, H, W, D]."""
        win, shift = stage_window(x.shape[1], x.shape[2], self.window)
        for i in range(self.depth):
            x = SwinBlock(self.dim, self.num_heads, win, shift if i % 2 else 0, dtype=self.dtype)(x)
        return x


class SwinUNet(nn.Module):
    """Swin-Unet: Swin encoder, Swin decoder with patch expanding, skip connections."""

    num_classes: int = NUM_CLASSES  # output classes (background + 4 arteries)
    embed_dim: int = 64  # token width of the first stage ("initial filters"); doubled per stage
    depths: Sequence[int] = (2, 2, 2, 2)  # Swin blocks per encoder stage (decoder mirrors)
    num_heads: Sequence[int] = (2, 4, 8, 16)  # heads per stage
    window: int = 8  # window side in tokens
    patch: int = 4  # patch embedding stride (pixels per token side)
    in_channels: int = 1  # input channels (normalised HU)
    background_prior: float | None = None  # None: bias-free head as Swin-Unet; else a
    # head with bias initialised to this p(background) (see unet.prior_bias_init)
    dtype: Any = jnp.float32  # compute dtype; params and logits float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """x [B, H, W, 1] -> logits [B, H, W, num_classes] (float32)."""
        del train
        stages = len(self.depths)
        if len(self.num_heads) != stages:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ")
        check_input(x, self.patch * 2 ** (stages - 1), self.in_channels)
        c = self.embed_dim
        x = nn.Conv(
            c,
            (self.patch, self.patch),
            strides=self.patch,
            padding="VALID",
            dtype=self.dtype,
            name="patch_embed",
        )(x.astype(self.dtype))
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="embed_norm")(x)
        skips = []
        for i in range(stages):
            skips.append(x)
            x = SwinStage(
                c * 2**i,
                self.depths[i],
                self.num_heads[i],
                self.window,
                self.dtype,
                name=f"encoder_{i}",
            )(x)
            if i < stages - 1:
                x = PatchMerging(self.dtype, name=f"merge_{i}")(x)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="bottleneck_norm")(x)
        for i in reversed(range(stages - 1)):
            d = c * 2**i
            x = PatchExpand(2, d, self.dtype, name=f"expand_{i}")(x)
            x = jnp.concatenate([x, skips[i]], axis=-1)
            x = nn.Dense(d, dtype=self.dtype, name=f"concat_back_{i}")(x)
            x = SwinStage(
                d, self.depths[i], self.num_heads[i], self.window, self.dtype, name=f"decoder_{i}"
            )(x)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="decoder_norm")(x)
        x = PatchExpand(self.patch, c, self.dtype, name="final_expand")(x)
        logits = nn.Conv(
            self.num_classes,
            (1, 1),
            use_bias=self.background_prior is not None,
            bias_init=prior_bias_init(self.background_prior),
            dtype=self.dtype,
            name="head",
        )(x)
        return logits.astype(jnp.float32)
