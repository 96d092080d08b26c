"""The DINO projection head (Flax Linen).

Layout (official DINO ``DINOHead`` without batch norm)::

    x [B, D] -> mlp_0 (D -> hidden) -> GELU -> mlp_1 (hidden -> hidden) -> GELU
             -> mlp_{n-1} (hidden -> bottleneck)              # n_layers Dense layers
             -> L2 normalise (float32, eps 1e-12 as F.normalize)
             -> last_layer: weight-normalised Dense (bottleneck -> out_dim, no bias)

With ``n_layers = 1`` the MLP is the single Dense ``mlp_0`` (D -> bottleneck). GELU is
exact (erf). Weight norm: for output unit ``j``, ``w[:, j] = g[j] * v[:, j] /
||v[:, j]||``; with ``norm_last_layer=True`` ``g`` is fixed to 1 and is not a parameter
(so every prototype is unit-norm and the logits are cosine similarities in [-1, 1]);
otherwise ``g`` is the learned parameter ``last_layer/scale`` [out_dim], initialised to
1. The last layer's parameters live under ``last_layer`` so the optimiser can freeze them
(``dino/optim.py``). MLP kernels use a truncated normal (std 0.02), biases zeros.

Last-layer init, as official DINO: its ``DINOHead`` applies ``trunc_normal_(std=0.02)``
to the MLP *before* it creates ``last_layer``, so the prototypes keep PyTorch's default
``nn.Linear`` init, ``kaiming_uniform_(a=sqrt(5))`` = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
with fan_in = bottleneck_dim. We draw the direction ``v`` from that same uniform
(:data:`LAST_LAYER_INIT`): each column's norm is about sqrt(1/3) = 0.58, against about 0.28
for a truncated normal of std 0.02 at bottleneck 256, and the norm of ``v`` sets how far
one optimiser step turns a prototype (the logits only see its direction).

Precision: the MLP runs in ``dtype`` (bf16 on GPU); the L2 normalisation, the last layer
(float32 matmul at ``Precision.HIGHEST``, so no TF32 on GPU) and so the logits are float32
whatever ``dtype``. A cosine logit rounded to bf16 moves by up to 2^-9, which the teacher
temperature 0.04 magnifies 25 times in the softmax.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

L2_EPS = 1e-12
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default nn.Linear weight init.
LAST_LAYER_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def l2_normalize(x: jnp.ndarray, eps: float = L2_EPS) -> jnp.ndarray:
    """``x / max(||x||, eps)`` over the last axis, in float32.

    Args:
      x: [..., D].
      eps: lower bound on the norm.

    Returns:
      float32 [..., D] with unit rows (rows with norm below eps are scaled by 1/eps).
    """
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


class WeightNormDense(nn.Module):
    """Bias-free Dense with weight normalisation per output unit."""

    features: int  # output units
    learn_scale: bool = False  # learn g (else g = 1)
    dtype: Any = jnp.float32  # compute dtype of the matmul
    param_dtype: Any = jnp.float32  # parameter dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Args: x [B, Din]. Returns: [B, features] in ``dtype``."""
        v = self.param(
            "kernel",
            LAST_LAYER_INIT,
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        v32 = v.astype(jnp.float32)
        w = v32 / jnp.sqrt(jnp.sum(v32 * v32, axis=0, keepdims=True))  # unit columns
        if self.learn_scale:
            g = self.param("scale", nn.initializers.ones, (self.features,), self.param_dtype)
            w = w * g.astype(jnp.float32)[None, :]
        precision = jax.lax.Precision.HIGHEST if self.dtype == jnp.float32 else None
        return jnp.dot(x.astype(self.dtype), w.astype(self.dtype), precision=precision)


class DINOHead(nn.Module):
    """DINO head: MLP -> L2 norm -> weight-normalised prototypes. Input width inferred."""

    out_dim: int = 65536  # number of prototypes K
    hidden_dim: int = 2048  # MLP hidden width
    bottleneck_dim: int = 256  # width before the last layer
    n_layers: int = 3  # Dense layers in the MLP (>= 1)
    norm_last_layer: bool = True  # fix the weight-norm scale g to 1
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32  # parameter dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Projects backbone features to prototype logits.

        Args:
          x: [B, D] features (e.g. the ViT's CLS token).

        Returns:
          [B, out_dim] float32 logits (before any temperature).
        """
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")
        if x.ndim != 2:
            raise ValueError(f"expected features [B, D], got shape {x.shape}")
        widths = [self.hidden_dim] * (self.n_layers - 1) + [self.bottleneck_dim]
        h = x.astype(self.dtype)
        for i, width in enumerate(widths):
            h = nn.Dense(
                width,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.initializers.truncated_normal(0.02),
                name=f"mlp_{i}",
            )(h)
            if i < len(widths) - 1:
                h = nn.gelu(h, approximate=False)
        h = l2_normalize(h)  # float32
        return WeightNormDense(
            self.out_dim,
            learn_scale=not self.norm_last_layer,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            name="last_layer",
        )(h)
