"""Official DINO (PyTorch) ViT weights -> Flax params of ``models.vit.ViT``.

Input: a state dict (names -> numpy arrays, or anything ``np.asarray`` accepts) with the
official ``vision_transformer.py`` names::

    cls_token [1, 1, D]   pos_embed [1, 1 + G*G, D]   norm.weight/bias [D]
    patch_embed.proj.weight [D, C, p, p]   patch_embed.proj.bias [D]
    blocks.{i}.norm1/norm2.weight/bias [D]
    blocks.{i}.attn.qkv.weight [3D, D] (+bias)   blocks.{i}.attn.proj.weight [D, D] (+bias)
    blocks.{i}.mlp.fc1.weight [4D, D] (+bias)   blocks.{i}.mlp.fc2.weight [D, 4D] (+bias)

Mapping: Linear ``weight`` [out, in] -> Dense ``kernel`` [in, out] (transpose; the qkv
output order (3, heads, D/heads) is the same in both), LayerNorm ``weight`` -> ``scale``,
Conv2d ``weight`` [D, C, p, p] -> Conv ``kernel`` [p, p, C, D]. ``cls_token`` and
``pos_embed`` keep their shapes.

Channels: the ViT takes one channel (CT). A 3-channel (RGB) patch embedding is summed
over its input channels, which is exactly the RGB model applied to a grey image
replicated into R, G and B. Caveat: official DINO normalises each RGB channel with its
own ImageNet mean/std; a replicated CT slice is normalised once, so the summed filter
sees inputs on a slightly different scale than in pretraining.

Every key of the state dict must be used and every parameter of the ViT filled, with
the right shape; anything else raises a ``ValueError`` naming the keys.
:func:`backbone_state_dict` extracts the backbone from a full DINO training checkpoint
(``{"teacher": {"backbone.*": ..., "head.*": ...}, ...}``) or a DDP-wrapped one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dinolg_jax.models.vit import ViT, decode_variant

_BLOCK_LINEARS = {
    "attn.qkv": ("attn", "qkv"),
    "attn.proj": ("attn", "proj"),
    "mlp.fc1": ("mlp", "fc1"),
    "mlp.fc2": ("mlp", "fc2"),
}


def backbone_state_dict(checkpoint: Mapping[str, Any], which: str = "teacher") -> dict[str, Any]:
    """The backbone entries of an official DINO ``.pth`` payload.

    Accepts a plain backbone state dict (``dino_vits8_pretrain.pth``) or a full training
    checkpoint (``checkpoint.pth`` with ``teacher``/``student`` dicts). Strips
    ``module.`` (DDP) and ``backbone.`` prefixes and drops the projection head
    (``head.*``).

    Args:
      checkpoint: the loaded payload.
      which: ``"teacher"`` or ``"student"`` for full checkpoints.

    Returns:
      Backbone names -> arrays (not copied).
    """
    if which in checkpoint and isinstance(checkpoint[which], Mapping):
        checkpoint = checkpoint[which]
    elif "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    out = {}
    for name, value in checkpoint.items():
        for prefix in ("module.", "backbone."):
            name = name.removeprefix(prefix)
        if name.startswith("head."):
            continue
        out[name] = value
    return out


def _params_template(variant: str, ref_image_size: int) -> Any:
    model = ViT(variant, ref_image_size=ref_image_size)
    x = jnp.zeros((1, ref_image_size, ref_image_size, 1), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def vit_params_from_torch(
    state_dict: Mapping[str, Any], variant: str, *, ref_image_size: int = 224
) -> dict[str, Any]:
    """Converts official DINO ViT weights to :class:`~dinolg_jax.models.vit.ViT` params.

    Args:
      state_dict: official names -> arrays (numpy or ``np.asarray``-convertible).
      variant: the ViT variant they belong to, e.g. ``"S/8"``.
      ref_image_size: image side of the position table (224 for official DINO).

    Returns:
      Nested dict of float32 numpy arrays, the ViT's ``params`` collection.

    Raises:
      ValueError: for missing or unused keys, or shapes that do not fit the variant.
    """
    spec = decode_variant(variant)
    sd = {k: np.asarray(v, dtype=np.float32) for k, v in state_dict.items()}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in sd:
            raise ValueError(f"state dict lacks {name!r} (needed for ViT {variant})")
        used.add(name)
        return sd[name]

    def linear(prefix: str) -> dict[str, np.ndarray]:
        return {"kernel": take(prefix + ".weight").T.copy(), "bias": take(prefix + ".bias")}

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": take(prefix + ".weight"), "bias": take(prefix + ".bias")}

    w = take("patch_embed.proj.weight")
    if w.ndim != 4:
        raise ValueError(f"patch_embed.proj.weight must be [D, C, p, p], got {w.shape}")
    if w.shape[1] == 3:
        w = w.sum(axis=1, keepdims=True)  # RGB filter applied to a replicated grey image
    elif w.shape[1] != 1:
        raise ValueError(f"patch embedding has {w.shape[1]} input channels; expected 1 or 3")
    params: dict[str, Any] = {
        "patch_embed": {
            "kernel": w.transpose(2, 3, 1, 0).copy(),
            "bias": take("patch_embed.proj.bias"),
        },
        "cls_token": take("cls_token"),
        "pos_embed": take("pos_embed"),
        "norm": norm("norm"),
    }
    for i in range(spec.depth):
        p = f"blocks.{i}."
        block: dict[str, Any] = {"norm1": norm(p + "norm1"), "norm2": norm(p + "norm2")}
        for torch_name, (group, name) in _BLOCK_LINEARS.items():
            block.setdefault(group, {})[name] = linear(p + torch_name)
        params[f"blocks_{i}"] = block

    unused = sorted(set(sd) - used)
    if unused:
        shown = ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else "")
        raise ValueError(f"{len(unused)} state-dict keys not used by ViT {variant}: {shown}")
    check_vit_params(params, variant, ref_image_size=ref_image_size)
    return params


def check_vit_params(params: Any, variant: str, *, ref_image_size: int = 224) -> None:
    """Checks that ``params`` has exactly the paths and shapes of ViT ``variant``.

    Args:
      params: a ViT ``params`` collection (nested dict of arrays).
      variant: e.g. ``"S/8"``.
      ref_image_size: image side of the position table.

    Raises:
      ValueError: naming the missing / extra paths or the mismatched shapes.
    """
    template = _params_template(variant, ref_image_size)
    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    want = dict(jax.tree_util.tree_flatten_with_path(template)[0])
    missing = sorted(jax.tree_util.keystr(k) for k in set(want) - set(got))
    extra = sorted(jax.tree_util.keystr(k) for k in set(got) - set(want))
    if missing or extra:
        raise ValueError(
            f"converted params do not fit ViT {variant}: missing {missing}, extra {extra}"
        )
    bad = [
        f"{jax.tree_util.keystr(k)}: got {got[k].shape}, ViT {variant} needs {want[k].shape}"
        for k in want
        if tuple(got[k].shape) != tuple(want[k].shape)
    ]
    if bad:
        raise ValueError("shape mismatch (wrong variant or ref_image_size?): " + "; ".join(bad))
