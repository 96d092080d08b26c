"""A small CNN slice classifier: the ablation's "signal in the data" yardstick.

Four 3x3 convolutions (ReLU; 2x2 max pooling after the second and the fourth), a
global max pool over the feature map (a lesion anywhere lights the slice up), a linear
layer to one logit. At 64-128 px inputs it has a few ten thousand parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class SliceCNN(nn.Module):
    """``(images [B, H, W, 1] float32, normalised HU) -> [B]`` calcium logits.

    Attributes:
      channels: output channels of the four convolutions.
    """

    channels: Sequence[int] = (16, 16, 32, 32)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images
        for i, c in enumerate(self.channels):
            x = nn.relu(nn.Conv(int(c), (3, 3), name=f"conv{i}")(x))
            if i % 2 == 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.max(x, axis=(1, 2))  # [B, C]
        return nn.Dense(1, name="head")(x)[:, 0]


@dataclasses.dataclass(frozen=True)
class CnnLogits:
    """``model.apply`` as a ``(params, images [B, H, W, 1]) -> [B]`` function, hashable by
    the model (so ``train.slice_classifier`` reuses its jitted step)."""

    model: SliceCNN

    def __call__(self, params: Any, images: jax.Array) -> jax.Array:
        return self.model.apply({"params": params}, images)
