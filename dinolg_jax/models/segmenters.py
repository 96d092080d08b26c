"""Registry of segmentation models, so configs select one by name.

=================  ===========================================  ==========================
name               model                                        input side divisible by
=================  ===========================================  ==========================
``unet``           :class:`~dinolg_jax.models.unet.UNet`           ``2**depth`` (16)
``attention_unet`` :class:`~dinolg_jax.models.unet.AttentionUNet`  ``2**depth`` (16)
``swin_unet``      :class:`~dinolg_jax.models.swin_unet.SwinUNet`  ``patch*2**(stages-1)`` (32)
``vit_unet``       :class:`~dinolg_jax.models.vit_seg.ViTUNet`     the ViT patch (8)
=================  ===========================================  ==========================

Every model maps ``x [B, H, W, 1]`` (normalised HU) to float32 logits ``[B, H, W, 5]``
and is called as ``apply({"params": p}, x, train=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from dinolg_jax.models.swin_unet import SwinUNet
from dinolg_jax.models.unet import AttentionUNet, UNet
from dinolg_jax.models.vit_seg import ViTUNet

SEGMENTERS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "attention_unet": AttentionUNet,
    "swin_unet": SwinUNet,
    "vit_unet": ViTUNet,
}


def build_segmenter(name: str, **kwargs: Any) -> nn.Module:
    """Builds a segmentation model by registry name.

    Args:
      name: one of :data:`SEGMENTERS`.
      **kwargs: the model's dataclass fields (e.g. ``filters=64`` for ``unet``). Lists are
        turned into tuples (Linen fields must be hashable).

    Raises:
      ValueError: for an unknown name or a field the model does not have.
    """
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmentation model {name!r}; choose from {sorted(SEGMENTERS)}")
    cls = SEGMENTERS[name]
    fields = set(getattr(cls, "__dataclass_fields__", {}))
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(f"{name} has no field(s) {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(**kwargs)
