"""The DINO Vision Transformer (Flax Linen), single-channel CT input.

Architecture (official DINO ``vision_transformer.py``, one input channel)::

    x [B, H, W, C] -> patch_embed (p x p conv, stride p) -> [B, N, D], N = (H/p)(W/p)
    tokens = concat(cls_token + pos[0], patches + interp(pos[1:]))        # [B, 1+N, D]
    depth x pre-norm block:  x += drop_path(attn(norm1(x)));  x += drop_path(mlp(norm2(x)))
    tokens = norm(x);  cls = tokens[:, 0]

LayerNorm eps 1e-6, qkv with bias, exact (erf) GELU, MLP ratio 4, stochastic depth rate
``drop_path_rate * i / (depth - 1)`` for block ``i`` (linear over depth, as DINO), applied
per sample and only with ``train=True`` (it draws from the ``"dropout"`` rng collection).

Position embedding: a learned ``[1, 1 + G*G, D]`` table for the reference grid
``G = ref_image_size / patch`` (224 / p). Other crop sizes resample the patch part of the
table with PyTorch's bicubic rule (``F.interpolate(mode="bicubic", align_corners=False)``:
Keys kernel with a = -0.75, half-pixel centres, edge-clamped taps, no antialiasing) as
two small interpolation matrices, so weights imported from PyTorch behave as they did
there. ``jax.image.resize("bicubic")`` is not used: it has a = -0.5 and antialiases when
downsampling (28 -> 12 for 96 px crops at p = 8), which changes the table noticeably.
Scale: we sample with the exact size ratio ``G / g`` (as ``F.interpolate(size=...)``, and
as the peer benchmark does). Official DINO v1 passes ``scale_factor=(g + 0.1) / G`` so
torch samples output cell ``i`` at ``(i + 0.5) G / (g + 0.1) - 0.5`` instead of ``(i + 0.5)
G / g - 0.5``: the offset grows along the grid to ``0.1 (g - 0.5) G / (g (g + 0.1))``,
about ``0.1 G / g`` table cells at the far edge: 0.22 cells for 96 px crops at p = 8
(g = 12, G = 28). We do not reproduce that quirk. At the reference size the table is used as is.

Attention goes through ``jax.nn.dot_product_attention(implementation=attention_impl)``
(``None``/``"xla"`` on CPU, ``"cudnn"`` with bf16 on GPU). With ``pad_tokens_to = m > 1``
q, k and v are zero-padded along the token axis to a multiple of ``m`` and the true length
is passed as ``query_seq_lengths``/``key_value_seq_lengths``, so padded keys get no
weight and the padded query rows are sliced off: the result equals the unpadded one
(cuDNN refuses training at 785 or 145 tokens otherwise). With ``return_attention`` the
last block computes its attention explicitly (softmax in float32) and returns the maps.

Parameters (float32, names follow the PyTorch checkpoint, see ``models/torch_import.py``)::

    patch_embed/{kernel [p, p, C, D], bias [D]}   cls_token [1, 1, D]
    pos_embed [1, 1 + G*G, D]                     norm/{scale, bias}
    blocks_{i}/norm1, attn/qkv (kernel [D, 3D], output order (3, heads, D/heads)),
    attn/proj, norm2, mlp/fc1 [D, 4D], mlp/fc2 [4D, D]
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-6
MLP_RATIO = 4
DROP_PATH_RNG = "dropout"


@dataclasses.dataclass(frozen=True)
class VitSpec:
    """Shape of one ViT variant."""

    width: int  # token dimension D
    depth: int  # number of blocks
    heads: int  # attention heads (D % heads == 0)
    patch: int  # patch side, pixels

    @property
    def mlp_dim(self) -> int:
        return MLP_RATIO * self.width


# name -> (width, depth, heads); "mu" is a tiny test-only model.
VARIANTS: dict[str, tuple[int, int, int]] = {
    "mu": (32, 2, 2),
    "nano": (64, 4, 4),
    "micro": (128, 4, 4),
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
}


def decode_variant(variant: str) -> VitSpec:
    """Decodes ``"S/8"``-style names into a :class:`VitSpec`.

    Args:
      variant: ``"<size>/<patch>"`` with size in :data:`VARIANTS` (``mu``, ``Ti``, ``S``,
        ``B``, ``L``) and a positive patch side in pixels.

    Returns:
      The variant's width, depth, heads and patch.

    Raises:
      ValueError: for an unknown size or a malformed name.
    """
    size, sep, patch = variant.partition("/")
    if not sep or size not in VARIANTS or not patch.isdigit() or int(patch) <= 0:
        raise ValueError(
            f"ViT variant must look like 'S/8' with size in {sorted(VARIANTS)} and a "
            f"positive patch size; got {variant!r}"
        )
    width, depth, heads = VARIANTS[size]
    return VitSpec(width=width, depth=depth, heads=heads, patch=int(patch))


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """1-D interpolation matrix of PyTorch's bicubic resize (``align_corners=False``).

    Output sample ``i`` sits at source coordinate ``(i + 0.5) * n_in / n_out - 0.5``; its
    four taps use the Keys cubic kernel with parameter ``a`` and indices clamped to the
    edge. No antialiasing. ``n_in == n_out`` gives the identity exactly.

    Args:
      n_in: source length.
      n_out: output length.
      a: Keys kernel parameter (-0.75 in PyTorch).

    Returns:
      float64 [n_out, n_in] matrix ``M`` with ``resized = M @ source``.
    """
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"sizes must be positive, got n_in={n_in}, n_out={n_out}")
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    t = src - base
    dist = np.stack([t + 1.0, t, 1.0 - t, 2.0 - t], axis=1)  # [n_out, 4], |offset|
    near = ((a + 2.0) * dist - (a + 3.0)) * dist**2 + 1.0
    far = ((a * dist - 5.0 * a) * dist + 8.0 * a) * dist - 4.0 * a
    w = np.where(dist <= 1.0, near, far)
    idx = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, n_in - 1)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.repeat(np.arange(n_out), 4), idx.ravel()), w.ravel())
    return m


def interpolate_pos_grid(grid: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
    """Bicubically resizes a position-embedding grid (see :func:`bicubic_matrix`).

    Args:
      grid: [Gh, Gw, D] table.
      out_hw: (gh, gw) output grid size.

    Returns:
      [gh, gw, D] in ``grid``'s dtype (computed in float32).
    """
    gh_in, gw_in, _ = grid.shape
    if (gh_in, gw_in) == tuple(out_hw):
        return grid
    mh = jnp.asarray(bicubic_matrix(gh_in, out_hw[0]), jnp.float32)
    mw = jnp.asarray(bicubic_matrix(gw_in, out_hw[1]), jnp.float32)
    out = jnp.einsum(
        "ig,jh,ghd->ijd", mh, mw, grid.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )
    return out.astype(grid.dtype)


def _dense(features: int, name: str, dtype: Any, param_dtype: Any) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.initializers.truncated_normal(0.02),
        name=name,
    )


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    heads: int  # number of heads
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32  # parameter dtype
    attention_impl: str | None = None  # jax.nn.dot_product_attention implementation
    pad_tokens_to: int = 0  # pad the token count to a multiple of this (0/1: never)
    explicit: bool = False  # compute softmax weights explicitly and return them

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """Attends over tokens.

        Args:
          x: [B, N, D] tokens.

        Returns:
          ([B, N, D] output, [B, heads, N, N] float32 weights or None unless explicit).
        """
        b, n, d = x.shape
        if d % self.heads:
            raise ValueError(f"width {d} is not divisible by {self.heads} heads")
        hd = d // self.heads
        qkv = _dense(3 * d, "qkv", self.dtype, self.param_dtype)(x)
        qkv = qkv.reshape(b, n, 3, self.heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
        weights = None
        if self.explicit:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            weights = jax.nn.softmax(logits / math.sqrt(hd), axis=-1)  # [B, H, N, N]
            out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        else:
            m = self.pad_tokens_to
            n_pad = -(-n // m) * m if m > 1 else n
            if n_pad != n:
                pad = ((0, 0), (0, n_pad - n), (0, 0), (0, 0))
                q, k, v = (jnp.pad(t, pad) for t in (q, k, v))
                lengths = jnp.full((b,), n, jnp.int32)
                out = jax.nn.dot_product_attention(
                    q,
                    k,
                    v,
                    query_seq_lengths=lengths,
                    key_value_seq_lengths=lengths,
                    implementation=self.attention_impl,
                )[:, :n]
            else:
                out = jax.nn.dot_product_attention(q, k, v, implementation=self.attention_impl)
        out = out.reshape(b, n, d)
        return _dense(d, "proj", self.dtype, self.param_dtype)(out), weights


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    hidden: int  # hidden width (4 D)
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32  # parameter dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        d = x.shape[-1]
        x = _dense(self.hidden, "fc1", self.dtype, self.param_dtype)(x)
        x = nn.gelu(x, approximate=False)
        return _dense(d, "fc2", self.dtype, self.param_dtype)(x)


class Block(nn.Module):
    """Pre-norm transformer block with per-sample stochastic depth."""

    heads: int  # attention heads
    mlp_dim: int  # MLP hidden width
    drop_path: float = 0.0  # probability of dropping each residual branch per sample
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32  # parameter dtype
    attention_impl: str | None = None  # see Attention
    pad_tokens_to: int = 0  # see Attention
    explicit_attention: bool = False  # return this block's attention weights

    def _drop(self, y: jnp.ndarray, train: bool) -> jnp.ndarray:
        if not train or self.drop_path <= 0.0:
            return y
        keep = 1.0 - self.drop_path
        mask = jax.random.bernoulli(self.make_rng(DROP_PATH_RNG), keep, (y.shape[0], 1, 1))
        return jnp.where(mask, y / jnp.asarray(keep, y.dtype), jnp.zeros_like(y))

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """Args: x [B, N, D]; train enables stochastic depth. Returns (x, weights)."""
        ln = functools.partial(
            nn.LayerNorm, epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype
        )
        y, weights = Attention(
            self.heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
            pad_tokens_to=self.pad_tokens_to,
            explicit=self.explicit_attention,
            name="attn",
        )(ln(name="norm1")(x))
        x = x + self._drop(y, train)
        y = Mlp(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")(
            ln(name="norm2")(x)
        )
        return x + self._drop(y, train), weights


class ViT(nn.Module):
    """DINO ViT backbone. ``apply({"params": p}, x, train=False) -> (cls, aux)``."""

    variant: str = "S/8"  # "<mu|Ti|S|B|L>/<patch>"
    dtype: Any = jnp.float32  # compute dtype (bf16 on GPU)
    param_dtype: Any = jnp.float32  # parameter dtype
    drop_path_rate: float = 0.0  # stochastic depth rate of the last block
    return_attention: bool = False  # aux["attention"]: last block's maps
    n_last_blocks: int = 0  # aux["cls_per_block"]: normed CLS of the last n blocks
    attention_impl: str | None = None  # None/"xla" (CPU) or "cudnn" (GPU, bf16)
    pad_tokens_to: int = 0  # pad tokens to a multiple of this inside attention (0: off)
    remat: bool = False  # rematerialise each block in the backward pass
    remat_policy: str | None = None  # name in jax.checkpoint_policies (None: save nothing)
    ref_image_size: int = 224  # image side the position table is learned for

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> tuple[jnp.ndarray, dict]:
        """Encodes images.

        Args:
          x: [B, H, W, C] images; H and W multiples of the patch size.
          train: enables stochastic depth (needs a ``"dropout"`` rng when
            ``drop_path_rate > 0``).

        Returns:
          cls [B, D] (final-normed CLS token, compute dtype) and aux with
          ``tokens`` [B, 1+N, D] (final-normed), ``attention`` [B, heads, 1+N, 1+N]
          float32 when ``return_attention``, ``cls_per_block`` [B, n, D] (CLS of the last
          ``n_last_blocks`` blocks, each through the final norm, oldest first) when
          ``n_last_blocks > 0``.
        """
        spec = decode_variant(self.variant)
        p, d = spec.patch, spec.width
        if x.ndim != 4:
            raise ValueError(f"expected images [B, H, W, C], got shape {x.shape}")
        _, h, w, _ = x.shape
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        if self.ref_image_size % p:
            raise ValueError(f"ref_image_size {self.ref_image_size} not a multiple of {p}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if not 0 <= self.n_last_blocks <= spec.depth:
            raise ValueError(f"n_last_blocks must be in [0, {spec.depth}]")
        g = self.ref_image_size // p
        gh, gw = h // p, w // p

        patches = nn.Conv(
            d,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="patch_embed",
        )(x.astype(self.dtype))  # [B, gh, gw, D]
        b = patches.shape[0]
        init = nn.initializers.truncated_normal(0.02)
        cls_token = self.param("cls_token", init, (1, 1, d), self.param_dtype)
        pos = self.param("pos_embed", init, (1, 1 + g * g, d), self.param_dtype)
        pos_patch = interpolate_pos_grid(pos[0, 1:].reshape(g, g, d), (gh, gw))
        patches = patches + pos_patch.astype(self.dtype)[None]
        cls = jnp.broadcast_to((cls_token + pos[:, :1]).astype(self.dtype), (b, 1, d))
        tokens = jnp.concatenate([cls, patches.reshape(b, gh * gw, d)], axis=1)

        block_cls = Block
        if self.remat:
            policy = None
            if self.remat_policy is not None:
                policy = getattr(jax.checkpoint_policies, self.remat_policy)
            block_cls = nn.remat(Block, static_argnums=(2,), policy=policy)
        dpr = np.linspace(0.0, self.drop_path_rate, spec.depth)
        norm = nn.LayerNorm(
            epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="norm"
        )
        aux: dict[str, Any] = {}
        per_block = []
        for i in range(spec.depth):
            last = i == spec.depth - 1
            tokens, weights = block_cls(
                spec.heads,
                spec.mlp_dim,
                drop_path=float(dpr[i]),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                attention_impl=self.attention_impl,
                pad_tokens_to=self.pad_tokens_to,
                explicit_attention=self.return_attention and last,
                name=f"blocks_{i}",
            )(tokens, train)
            if i >= spec.depth - self.n_last_blocks:
                per_block.append(tokens[:, 0])
            if weights is not None:
                aux["attention"] = weights
        tokens = norm(tokens)
        aux["tokens"] = tokens
        if per_block:
            aux["cls_per_block"] = norm(jnp.stack(per_block, axis=1))
        return tokens[:, 0], aux
