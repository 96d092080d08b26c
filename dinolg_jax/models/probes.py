"""Slice classifiers on frozen DINO features ("has calcium?"), selected by name.

==============  ===============================  ======================================
name            input feature                    model
==============  ===============================  ======================================
``linear``      ``pooled`` [B, (n+1) D]          one linear layer -> 1 logit (DINO's
                                                 linear evaluation: the CLS tokens of
                                                 the last n blocks and the mean patch
                                                 token, concatenated)
``transformer`` ``tokens`` [B, T, D]             Linear(D -> width) + its own CLS token +
                                                 learned position embedding, ``depth``
                                                 pre-norm ViT blocks, LayerNorm, a linear
                                                 layer on the CLS -> 1 logit (the paper's
                                                 "transformers-based binary
                                                 classification model", Fig. 5)
==============  ===============================  ======================================

Both return one logit per slice, float32 [B]; ``sigmoid(logit)`` is the score thresholded
for the gate. Both first standardise their input per feature (:class:`Standardize`): frozen
DINO features vary between slices by a few per cent of their size, and an unscaled probe
trained with Adam for a few hundred steps barely moves from chance
(docs/measurements.md#probe-input-standardisation).
The statistics are set from the training split by ``eval/probe.py`` and live in the
param tree (``standardize/mean``, ``standardize/inv_std``), never trained, so a saved
probe carries them to inference. ``PROBE_INPUTS`` names the feature each probe consumes (see
``eval/features.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinolg_jax.models.vit import LN_EPS, Block


class Standardize(nn.Module):
    """x [..., F] -> (x - mean) * inv_std with per-feature statistics that are not trained.

    Initialised to the identity; ``eval/probe.py`` overwrites ``mean`` and ``inv_std``
    with the training split's statistics and freezes them in the optimiser.
    """

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        f = x.shape[-1]
        mean = self.param("mean", nn.initializers.zeros, (f,), jnp.float32)
        inv_std = self.param("inv_std", nn.initializers.ones, (f,), jnp.float32)
        mean, inv_std = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(inv_std)
        return (x.astype(jnp.float32) - mean) * inv_std


class LinearProbe(nn.Module):
    """A single linear layer on pooled features."""

    dtype: Any = jnp.float32  # compute dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """x [B, F] -> logits [B] (float32)."""
        del train
        if x.ndim != 2:
            raise ValueError(f"linear probe expects pooled features [B, F], got {x.shape}")
        x = Standardize(name="standardize")(x)
        out = nn.Dense(1, dtype=self.dtype, kernel_init=nn.initializers.zeros)(x)
        return out[:, 0].astype(jnp.float32)


class TransformerProbe(nn.Module):
    """A small transformer over patch tokens with its own CLS token."""

    width: int = 64  # token width inside the probe
    depth: int = 1  # transformer blocks
    heads: int = 2  # attention heads
    max_tokens: int = 4096  # size of the learned position table (>= tokens per slice)
    dtype: Any = jnp.float32  # compute dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """x [B, T, D] -> logits [B] (float32)."""
        del train
        if x.ndim != 3:
            raise ValueError(f"transformer probe expects tokens [B, T, D], got {x.shape}")
        b, t, _ = x.shape
        if t > self.max_tokens:
            raise ValueError(f"{t} tokens exceed the probe's max_tokens={self.max_tokens}")
        x = Standardize(name="standardize")(x)
        h = nn.Dense(self.width, dtype=self.dtype, name="embed")(x.astype(self.dtype))
        init = nn.initializers.truncated_normal(0.02)
        cls = self.param("cls_token", init, (1, 1, self.width))
        pos = self.param("pos_embed", init, (1, 1 + self.max_tokens, self.width))
        h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(h.dtype), h], 1)
        h = h + pos[:, : 1 + t].astype(h.dtype)
        for i in range(self.depth):
            h, _ = Block(self.heads, 4 * self.width, dtype=self.dtype, name=f"blocks_{i}")(h, False)
        h = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(h)
        return nn.Dense(1, dtype=self.dtype, name="head")(h[:, 0])[:, 0].astype(jnp.float32)


PROBES: dict[str, Callable[..., nn.Module]] = {
    "linear": LinearProbe,
    "transformer": TransformerProbe,
}
PROBE_INPUTS: dict[str, str] = {"linear": "pooled", "transformer": "tokens"}


def build_probe(name: str, **kwargs: Any) -> nn.Module:
    """Builds a probe by registry name with the given dataclass fields.

    Raises:
      ValueError: for an unknown name or field.
    """
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; choose from {sorted(PROBES)}")
    cls = PROBES[name]
    unknown = set(kwargs) - set(getattr(cls, "__dataclass_fields__", {}))
    if unknown:
        raise ValueError(f"probe {name} has no field(s) {sorted(unknown)}")
    return cls(**kwargs)
