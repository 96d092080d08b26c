"""U-Net and Attention U-Net for per-vessel calcium segmentation (Flax Linen).

The paper's Table 4 models: 64 initial filters, 512x512 input, 5 classes
(0 background, 1 RCA, 2 LAD, 3 LCA, 4 LCX). Both nets take any input whose height and
width are divisible by ``2**depth`` (16 for the default depth 4) and one channel
(normalised HU), and return per-pixel logits of the input's size.

Layout (``f`` = ``filters``, default depth 4)::

    encoder  DoubleConv(1->f) | pool | DoubleConv(f->2f) | pool | ... DoubleConv(4f->8f) | pool
    bottom   DoubleConv(8f->16f)
    decoder  per level, deepest first: ConvTranspose 2x2/2 (2c->c) -> [attention gate on the
             skip] -> concat(skip, up) -> DoubleConv(2c->c)
    head     1x1 conv (f -> num_classes)

A DoubleConv is two (3x3 conv + bias -> GroupNorm -> ReLU). GroupNorm, not BatchNorm: a
slice's prediction must not depend on which other slices share its batch (the integrated
system feeds a variable number of gated slices), and no mutable batch statistics have to
be carried through data-parallel training. Groups: ``gcd(norm_groups, channels)``.

The attention gate is the additive gate of Oktay et al. (2018), "Attention U-Net": with
``x`` the skip features (c channels) and ``g`` the upsampled decoder features (c channels)
at the same resolution, ``alpha = sigmoid(psi(relu(W_x x + W_g g)))`` with 1x1 convs
``W_x`` (c -> c/2, no bias), ``W_g`` (c -> c/2, bias) and ``psi`` (c/2 -> 1, bias); the skip
passed on is ``alpha * x``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

NUM_CLASSES = 5
CLASS_NAMES = ("background", "RCA", "LAD", "LCA", "LCX")


def prior_bias_init(background_prior: float | None):
    """Bias initialiser of a logits layer: zero, or (with a prior) ``p(background)`` at init.

    With ``background_prior = pi`` the background bias is ``log(pi (K-1) / (1 - pi))`` and
    the others 0, so a net with small initial features starts predicting background with
    probability ``pi`` (the focal-loss paper's prior initialisation). With ~0.1 % calcium
    pixels this skips the long first phase in which the net only learns the background
    and the Dice term has no useful gradient.
    """
    if background_prior is None:
        return nn.initializers.zeros
    if not 0.0 < background_prior < 1.0:
        raise ValueError(f"background_prior must be in (0, 1), got {background_prior}")

    def init(key, shape, dtype=jnp.float32):
        del key
        k = shape[-1]
        bias = jnp.zeros(shape, dtype)
        return bias.at[0].set(math.log(background_prior * (k - 1) / (1.0 - background_prior)))

    return init


def check_input(x: jnp.ndarray, multiple: int, in_channels: int = 1) -> None:
    """Raises ValueError unless x is [B, H, W, in_channels] with H, W divisible by multiple."""
    if x.ndim != 4:
        raise ValueError(f"expected input [B, H, W, C], got shape {x.shape}")
    if x.shape[-1] != in_channels:
        raise ValueError(f"expected {in_channels} input channel(s), got shape {x.shape}")
    h, w = x.shape[1:3]
    if h % multiple or w % multiple:
        raise ValueError(f"input height and width must be divisible by {multiple}, got {h}x{w}")


class DoubleConv(nn.Module):
    """Two (3x3 conv -> GroupNorm -> ReLU)."""

    features: int  # output channels of both convs
    norm_groups: int = 8  # GroupNorm groups (gcd with the channel count)
    dtype: Any = jnp.float32  # compute dtype; params stay float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        groups = math.gcd(self.norm_groups, self.features)
        for _ in range(2):
            x = nn.Conv(self.features, (3, 3), padding="SAME", dtype=self.dtype)(x)
            x = nn.GroupNorm(num_groups=groups, dtype=self.dtype)(x)
            x = nn.relu(x)
        return x


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on a skip connection."""

    inter_features: int  # channels of the joint space (c/2)
    dtype: Any = jnp.float32  # compute dtype

    @nn.compact
    def __call__(self, skip: jnp.ndarray, gate: jnp.ndarray) -> jnp.ndarray:
        """skip [B,H,W,c], gate [B,H,W,c'] -> gated skip [B,H,W,c]."""
        theta = nn.Conv(self.inter_features, (1, 1), use_bias=False, dtype=self.dtype)(skip)
        phi = nn.Conv(self.inter_features, (1, 1), dtype=self.dtype)(gate)
        psi = nn.Conv(1, (1, 1), dtype=self.dtype)(nn.relu(theta + phi))
        alpha = nn.sigmoid(psi)  # [B, H, W, 1]
        self.sow("intermediates", "alpha", alpha)
        return skip * alpha


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with GroupNorm; ``attention=True`` gives Attention U-Net."""

    num_classes: int = NUM_CLASSES  # output classes (background + 4 arteries)
    filters: int = 64  # channels of the first level; doubled at each level
    depth: int = 4  # number of 2x downsamplings; input sides must be divisible by 2**depth
    norm_groups: int = 8  # GroupNorm groups
    attention: bool = False  # additive attention gates on the skips
    in_channels: int = 1  # input channels (normalised HU)
    background_prior: float | None = None  # p(background) at init (None: zero head bias)
    dtype: Any = jnp.float32  # compute dtype; params and logits float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """x [B, H, W, 1] -> logits [B, H, W, num_classes] (float32).

        ``train`` is accepted for a uniform interface; the net has no dropout or batch
        statistics, so it does not change the output.
        """
        del train
        check_input(x, 2**self.depth, self.in_channels)
        x = x.astype(self.dtype)
        skips = []
        for level in range(self.depth):
            x = DoubleConv(self.filters * 2**level, self.norm_groups, self.dtype)(x)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = DoubleConv(self.filters * 2**self.depth, self.norm_groups, self.dtype)(x)
        for level in reversed(range(self.depth)):
            c = self.filters * 2**level
            x = nn.ConvTranspose(c, (2, 2), strides=(2, 2), dtype=self.dtype)(x)
            skip = skips[level]
            if self.attention:
                skip = AttentionGate(max(c // 2, 1), self.dtype)(skip, x)
            x = jnp.concatenate([skip, x], axis=-1)
            x = DoubleConv(c, self.norm_groups, self.dtype)(x)
        logits = nn.Conv(
            self.num_classes,
            (1, 1),
            dtype=self.dtype,
            bias_init=prior_bias_init(self.background_prior),
        )(x)
        return logits.astype(jnp.float32)


class AttentionUNet(UNet):
    """Attention U-Net (Oktay et al. 2018): U-Net with additive attention gates on the skips."""

    attention: bool = True  # gates on
