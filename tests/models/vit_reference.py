"""Independent float64 numpy reference of the DINO ViT, on official PyTorch parameter names.

Shared by vit_test.py and torch_import_test.py (not a test module itself). Everything here is
written from the DINO paper / PyTorch semantics with explicit loops or plain matmuls, not
from the Flax code.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf


def torch_bicubic_loop(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """[n_out, n_in] matrix of torch bicubic (align_corners=False), one tap at a time."""

    def kernel(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        if d < 2:
            return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
        return 0.0

    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        x0 = math.floor(src)
        for k in range(x0 - 1, x0 + 3):
            m[i, min(max(k, 0), n_in - 1)] += kernel(src - k)
    return m


def random_state_dict(
    rng: np.random.Generator, width: int, depth: int, patch: int, grid: int, in_chans: int = 1
) -> dict[str, np.ndarray]:
    """A random float32 state dict with official DINO ViT names and PyTorch layouts."""
    d = width

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    sd = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, 1 + grid * grid, d),
        "patch_embed.proj.weight": r(d, in_chans, patch, patch),
        "patch_embed.proj.bias": r(d),
        "norm.weight": 1 + r(d),
        "norm.bias": r(d),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": 1 + r(d),
            b + "norm1.bias": r(d),
            b + "attn.qkv.weight": r(3 * d, d),
            b + "attn.qkv.bias": r(3 * d),
            b + "attn.proj.weight": r(d, d),
            b + "attn.proj.bias": r(d),
            b + "norm2.weight": 1 + r(d),
            b + "norm2.bias": r(d),
            b + "mlp.fc1.weight": r(4 * d, d),
            b + "mlp.fc1.bias": r(4 * d),
            b + "mlp.fc2.weight": r(d, 4 * d),
            b + "mlp.fc2.bias": r(d),
        }
    return sd


def _layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _linear(sd, name, x):
    return x @ sd[name + ".weight"].astype(np.float64).T + sd[name + ".bias"]


def reference_vit(
    sd: dict[str, np.ndarray],
    x: np.ndarray,
    *,
    patch: int,
    heads: int,
    branch_scale: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Runs the reference ViT.

    Args:
      sd: official-named state dict.
      x: [B, H, W, C] images.
      patch: patch side.
      heads: attention heads.
      branch_scale: per block (attn, mlp) per-sample multipliers [B] of the residual
        branches (stochastic depth); None: all 1.

    Returns:
      dict with ``tokens`` (final normed [B, 1+N, D]), ``block_out`` (list of un-normed
      block outputs), ``attention`` (last block [B, heads, 1+N, 1+N]).
    """
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    b, h, w, c = x.shape
    gh, gw = h // patch, w // patch
    wpe = sd["patch_embed.proj.weight"]  # [D, C, p, p]
    d = wpe.shape[0]
    pt = x.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 5, 2, 4)  # [B,gh,gw,C,p,p]
    tok = pt.reshape(b, gh * gw, -1) @ wpe.reshape(d, -1).T + sd["patch_embed.proj.bias"]
    pos = sd["pos_embed"][0]
    g = math.isqrt(pos.shape[0] - 1)
    grid = pos[1:].reshape(g, g, d)
    mh, mw = torch_bicubic_loop(g, gh), torch_bicubic_loop(g, gw)
    grid = np.einsum("ig,jh,ghd->ijd", mh, mw, grid)
    tok = tok + grid.reshape(gh * gw, d)
    cls = np.broadcast_to(sd["cls_token"][0] + pos[:1], (b, 1, d))
    t = np.concatenate([cls, tok], axis=1)
    n = t.shape[1]
    hd = d // heads
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    outs, attn = [], None
    for i in range(depth):
        p = f"blocks.{i}."
        sa, sm = branch_scale[i] if branch_scale is not None else (np.ones(b), np.ones(b))
        y = _layer_norm(t, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        qkv = _linear(sd, p + "attn.qkv", y).reshape(b, n, 3, heads, hd)
        q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # [B, H, N, hd]
        logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        o = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
        t = t + sa[:, None, None] * _linear(sd, p + "attn.proj", o)
        y = _layer_norm(t, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        y = _linear(sd, p + "mlp.fc1", y)
        y = 0.5 * y * (1 + erf(y / math.sqrt(2)))
        t = t + sm[:, None, None] * _linear(sd, p + "mlp.fc2", y)
        outs.append(t)
    tokens = _layer_norm(t, sd["norm.weight"], sd["norm.bias"])
    return {"tokens": tokens, "block_out": outs, "attention": attn}


def flax_to_torch_names(params) -> dict[str, np.ndarray]:
    """Maps Flax ViT params to the official PyTorch names and layouts (for tests)."""
    p = {k: v for k, v in params.items()}
    sd = {
        "cls_token": np.asarray(p["cls_token"]),
        "pos_embed": np.asarray(p["pos_embed"]),
        "patch_embed.proj.weight": np.asarray(p["patch_embed"]["kernel"]).transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": np.asarray(p["patch_embed"]["bias"]),
        "norm.weight": np.asarray(p["norm"]["scale"]),
        "norm.bias": np.asarray(p["norm"]["bias"]),
    }
    i = 0
    while f"blocks_{i}" in p:
        blk = p[f"blocks_{i}"]
        lin = {
            "attn.qkv": blk["attn"]["qkv"],
            "attn.proj": blk["attn"]["proj"],
            "mlp.fc1": blk["mlp"]["fc1"],
            "mlp.fc2": blk["mlp"]["fc2"],
        }
        for name, layer in lin.items():
            sd[f"blocks.{i}.{name}.weight"] = np.asarray(layer["kernel"]).T
            sd[f"blocks.{i}.{name}.bias"] = np.asarray(layer["bias"])
        for name in ("norm1", "norm2"):
            sd[f"blocks.{i}.{name}.weight"] = np.asarray(blk[name]["scale"])
            sd[f"blocks.{i}.{name}.bias"] = np.asarray(blk[name]["bias"])
        i += 1
    return sd
