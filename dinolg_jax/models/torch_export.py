"""Flax params of ``models.vit.ViT`` -> official DINO / timm ViT weights in safetensors.

The inverse of :mod:`dinolg_jax.models.torch_import`: the same names and layouts, the other
way round. Output names (one input channel, ``D`` the width, ``G = ref_image_size / p``)::

    cls_token [1, 1, D]   pos_embed [1, 1 + G*G, D]   norm.weight/bias [D]
    patch_embed.proj.weight [D, 1, p, p]   patch_embed.proj.bias [D]
    blocks.{i}.norm1/norm2.weight/bias [D]
    blocks.{i}.attn.qkv.weight [3D, D] (+bias)   blocks.{i}.attn.proj.weight [D, D] (+bias)
    blocks.{i}.mlp.fc1.weight [4D, D] (+bias)   blocks.{i}.mlp.fc2.weight [D, 4D] (+bias)

Mapping: Dense ``kernel`` [in, out] -> Linear ``weight`` [out, in] (transpose), LayerNorm
``scale`` -> ``weight``, Conv ``kernel`` [p, p, C, D] -> Conv2d ``weight`` [D, C, p, p];
``cls_token`` and ``pos_embed`` keep their shapes. Every value is copied bit for bit
(float32), so ``torch_import.vit_params_from_torch`` of the result gives the same params.

These are the key names of official DINO's ``vision_transformer.py`` and of timm's
``VisionTransformer`` (``num_classes=0``: no ``head``; default ``global_pool="token"``,
``class_token=True``, ``qkv_bias=True``, LayerNorm eps 1e-6, exact GELU, no LayerScale), so
``model.load_state_dict(...)`` takes the file with ``strict=True``.
:func:`timm_snippet` writes the lines that build and load such a model.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from dinolg_jax.models.torch_import import check_vit_params
from dinolg_jax.models.vit import decode_variant

# safetensors metadata: "pt" is what PyTorch-side loaders (transformers, timm) expect.
SAFETENSORS_METADATA = {"format": "pt"}
# timm's registered names of the official DINO ViTs (other variants use the constructor).
TIMM_NAMES = {
    "S/8": "vit_small_patch8_224",
    "S/16": "vit_small_patch16_224",
    "B/8": "vit_base_patch8_224",
    "B/16": "vit_base_patch16_224",
}
_BLOCK_LINEARS = {
    "attn.qkv": ("attn", "qkv"),
    "attn.proj": ("attn", "proj"),
    "mlp.fc1": ("mlp", "fc1"),
    "mlp.fc2": ("mlp", "fc2"),
}


def ref_image_size_of(params: Mapping[str, Any], variant: str) -> int:
    """Image side (pixels) the position table of ``params`` was learned for.

    Args:
      params: a ViT ``params`` collection with ``pos_embed`` [1, 1 + G*G, D].
      variant: e.g. ``"S/8"`` (its patch side p gives ``G * p``).

    Raises:
      ValueError: when ``pos_embed`` is missing or its patch part is not a square grid.
    """
    if "pos_embed" not in params:
        raise ValueError("params lack 'pos_embed': not a ViT params collection")
    n = int(np.shape(params["pos_embed"])[1]) - 1
    g = math.isqrt(max(n, 0))
    if n <= 0 or g * g != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
    return g * decode_variant(variant).patch


def _f32(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != np.float32:
        raise ValueError(f"ViT params must be float32 to export bit for bit, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def vit_params_to_torch(
    params: Mapping[str, Any], variant: str, *, ref_image_size: int | None = None
) -> dict[str, np.ndarray]:
    """Converts :class:`~dinolg_jax.models.vit.ViT` params to official DINO / timm names.

    Args:
      params: the ViT's ``params`` collection (numpy or jax arrays, float32).
      variant: the ViT variant, e.g. ``"S/8"``.
      ref_image_size: image side of the position table; None reads it from ``pos_embed``.

    Returns:
      Official names -> C-contiguous float32 numpy arrays in PyTorch layouts.

    Raises:
      ValueError: params that do not fit the variant (paths or shapes), or not float32.
    """
    if ref_image_size is None:
        ref_image_size = ref_image_size_of(params, variant)
    check_vit_params(params, variant, ref_image_size=ref_image_size)
    spec = decode_variant(variant)

    def linear(layer: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
        return {name + ".weight": _f32(layer["kernel"]).T, name + ".bias": _f32(layer["bias"])}

    def norm(layer: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
        return {name + ".weight": _f32(layer["scale"]), name + ".bias": _f32(layer["bias"])}

    sd = {
        "cls_token": _f32(params["cls_token"]),
        "pos_embed": _f32(params["pos_embed"]),
        "patch_embed.proj.weight": _f32(params["patch_embed"]["kernel"]).transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": _f32(params["patch_embed"]["bias"]),
        **norm(params["norm"], "norm"),
    }
    for i in range(spec.depth):
        block = params[f"blocks_{i}"]
        p = f"blocks.{i}."
        sd |= norm(block["norm1"], p + "norm1") | norm(block["norm2"], p + "norm2")
        for torch_name, (group, name) in _BLOCK_LINEARS.items():
            sd |= linear(block[group][name], p + torch_name)
    return {k: np.ascontiguousarray(v) for k, v in sorted(sd.items())}


def save_safetensors(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> str:
    """Writes ``state_dict`` as a safetensors file (atomically) and returns its SHA-256.

    The header lists the tensors in sorted name order with the metadata
    :data:`SAFETENSORS_METADATA`, so the same arrays always give the same bytes.

    Args:
      state_dict: names -> numpy arrays.
      path: the ``.safetensors`` file to write (its folder must exist).

    Returns:
      The file's SHA-256, hex.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    safetensors.numpy.save_file(arrays, tmp, metadata=dict(SAFETENSORS_METADATA))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # safetensors creates the file owner-only
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Names -> numpy arrays of a safetensors file (copied out of the memory map)."""
    return {k: np.array(v) for k, v in safetensors.numpy.load_file(path).items()}


def timm_snippet(variant: str, ref_image_size: int, filename: str = "model.safetensors") -> str:
    """Python lines that build the one-channel timm ViT of ``variant`` and load the file.

    The model takes ``x`` [B, 1, H, W] with ``H = W = ref_image_size`` (timm's default fixed
    input size) and returns the final-LayerNorm CLS token [B, D] (``num_classes=0``).
    Official DINO variants use their timm name; others the ``VisionTransformer``
    constructor with the variant's width, depth and heads.
    """
    spec = decode_variant(variant)
    size = f"img_size={ref_image_size}"
    if variant in TIMM_NAMES:
        build = (
            f'model = timm.create_model("{TIMM_NAMES[variant]}", pretrained=False, '
            f"in_chans=1, num_classes=0, {size})"
        )
    else:
        build = (
            "model = timm.models.vision_transformer.VisionTransformer("
            f"{size}, patch_size={spec.patch}, in_chans=1, num_classes=0, "
            f"embed_dim={spec.width}, depth={spec.depth}, num_heads={spec.heads})"
        )
    return "\n".join(
        [
            "import safetensors.torch, timm",
            build,
            f'model.load_state_dict(safetensors.torch.load_file("{filename}"))',
        ]
    )
