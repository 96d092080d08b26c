"""Segmentation on the DINO-LG encoder itself: the saved ViT plus a light U-shaped decoder.

The design card's "U-Net reuses the saved encoder params": the encoder is
:class:`dinolg_jax.models.vit.ViT` (its parameters live under ``params["encoder"]`` and
are replaced by an exported encoder with :func:`with_encoder_params`); its final patch
tokens ``[B, N, D]`` are laid out as a ``[B, H/p, W/p, D]`` map and upsampled to full
resolution by ``log2(p)`` decoder levels. Calcified lesions are often a few pixels wide,
smaller than a patch, so every decoder level also receives a skip from a shallow CNN stem
on the image at that resolution (as U-Net skips, but from a stem of a few filters)::

    stem_l   DoubleConv(. -> f*2^l) at resolution 1/2^l, l = 0 .. log2(p)-1 (max-pooled)
    tokens   ViT(x) -> [B, H/p, W/p, D] -> 1x1 conv -> f*2^L           (L = log2 p)
    level l  = L-1 .. 0: ConvTranspose 2x2/2 (-> f*2^l); concat stem_l; DoubleConv(-> f*2^l)
    head     1x1 conv (f -> num_classes)

``freeze_encoder`` stops gradients at the tokens, so the pretrained encoder is used as a
fixed feature extractor (its Adam updates are exactly zero).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dinolg_jax.models.unet import NUM_CLASSES, DoubleConv, check_input, prior_bias_init
from dinolg_jax.models.vit import ViT, decode_variant


class ViTUNet(nn.Module):
    """DINO ViT encoder + light decoder with CNN-stem skips; full-resolution logits."""

    variant: str = "S/8"  # ViT variant of the encoder ("<size>/<patch>", patch a power of 2)
    num_classes: int = NUM_CLASSES  # output classes (background + 4 arteries)
    decoder_filters: int = 16  # channels at full resolution; doubled per level
    norm_groups: int = 8  # GroupNorm groups in the decoder and stem
    freeze_encoder: bool = False  # stop gradients into the ViT
    ref_image_size: int = 224  # the encoder's position-table reference size
    attention_impl: str | None = None  # the encoder's attention implementation
    in_channels: int = 1  # input channels (normalised HU)
    background_prior: float | None = None  # p(background) at init (see unet.prior_bias_init)
    dtype: Any = jnp.float32  # compute dtype; params and logits float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """x [B, H, W, 1] -> logits [B, H, W, num_classes] (float32); H, W multiples of p."""
        p = decode_variant(self.variant).patch
        levels = int(np.log2(p))
        if 2**levels != p:
            raise ValueError(f"ViT patch {p} must be a power of 2 for the decoder")
        check_input(x, p, self.in_channels)
        b, h, w, _ = x.shape
        f = self.decoder_filters
        _, aux = ViT(
            variant=self.variant,
            dtype=self.dtype,
            ref_image_size=self.ref_image_size,
            attention_impl=self.attention_impl,
            name="encoder",
        )(x, train=False)
        tokens = aux["tokens"][:, 1:]  # [B, N, D], CLS dropped
        if self.freeze_encoder:
            tokens = jax.lax.stop_gradient(tokens)
        y = tokens.reshape(b, h // p, w // p, tokens.shape[-1]).astype(self.dtype)
        y = nn.Conv(f * 2**levels, (1, 1), dtype=self.dtype, name="token_proj")(y)

        stem = []
        s = x.astype(self.dtype)
        for level in range(levels):
            if level:
                s = nn.max_pool(s, (2, 2), strides=(2, 2))
            s = DoubleConv(f * 2**level, self.norm_groups, self.dtype, name=f"stem_{level}")(s)
            stem.append(s)
        for level in reversed(range(levels)):
            c = f * 2**level
            y = nn.ConvTranspose(c, (2, 2), strides=(2, 2), dtype=self.dtype, name=f"up_{level}")(y)
            y = jnp.concatenate([stem[level], y], axis=-1)
            y = DoubleConv(c, self.norm_groups, self.dtype, name=f"decoder_{level}")(y)
        logits = nn.Conv(
            self.num_classes,
            (1, 1),
            dtype=self.dtype,
            bias_init=prior_bias_init(self.background_prior),
            name="head",
        )(y)
        return logits.astype(jnp.float32)


def with_encoder_params(params: Any, encoder_params: Any) -> Any:
    """Returns ``params`` with ``params["encoder"]`` replaced by an exported encoder's.

    Args:
      params: a :class:`ViTUNet`'s ``params`` collection.
      encoder_params: the ViT params from ``runtime.checkpoint.load_encoder``.

    Raises:
      ValueError: if the trees differ in structure or any leaf's shape (another variant).
    """
    if "encoder" not in params:
        raise ValueError("params have no 'encoder' subtree: not a ViTUNet")
    want = jax.tree_util.tree_flatten_with_path(params["encoder"])[0]
    got = jax.tree_util.tree_flatten_with_path(encoder_params)[0]
    want_shapes = {jax.tree_util.keystr(k): np.shape(v) for k, v in want}
    got_shapes = {jax.tree_util.keystr(k): np.shape(v) for k, v in got}
    if want_shapes != got_shapes:
        diff = sorted(set(want_shapes.items()) ^ set(got_shapes.items()))[:4]
        raise ValueError(f"encoder params do not match the model's encoder; differences: {diff}")
    new = dict(params)
    new["encoder"] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), encoder_params)
    return new
