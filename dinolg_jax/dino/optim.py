"""The DINO optimiser: AdamW with scheduled lr and weight decay, clipping, a frozen last layer.

Per update (step ``t``, 0-based, counted by the optimiser itself)::

    1. clipping to ``clip_norm`` (3.0; 0/None disables), by default per parameter tensor
       as official DINO's ``utils.clip_gradients``: each tensor's gradient ``g`` becomes
       ``g * min(1, clip_norm / (||g|| + 1e-6))`` on its own (``clip_mode="per_param"``);
       ``clip_mode="global"`` scales all gradients by one factor from their global norm
       (``optax.clip_by_global_norm``);
    2. while t < freeze_last_layer_steps: gradients under "last_layer" are zeroed, after
       per-parameter clipping as official DINO's ``cancel_gradients_last_layer`` (the
       order does not change the result there); with global clipping they are zeroed
       first, so a frozen layer does not count in the global norm;
    3. AdamW with lr = lr_schedule(t) and weight decay = wd_schedule(t) (decoupled,
       ``p -= lr * (adam + wd * p)`` as torch.optim.AdamW), betas (0.9, 0.999), eps 1e-8;
    4. the "last_layer" parameters (the DINO head's weight-normalised prototypes) have
       their own AdamW state, held unchanged while frozen and their update is exactly
       zero, so when they unfreeze Adam starts afresh for them (bias correction from 1),
       as in official DINO where the cancelled gradients leave them out of the optimiser.

Weight-decay mask (decided to match official DINO's ``get_params_groups``): no decay on
biases or any parameter with fewer than 2 dimensions (LayerNorm scales and biases, the
head's weight-norm scale ``g``). Every kernel is decayed, and so are ``cls_token`` [1, 1,
D] and ``pos_embed`` [1, 1+N, D]: official DINO decays them too (they are not 1-D there).
Difference from official DINO: with ``norm_last_layer=False`` its ``weight_g`` is [K, 1]
and decayed; ours is [K] and not decayed. (The PyTorch peer benchmark clips globally:
``clip_mode="global"`` reproduces it.)

The lr and weight decay are injected with ``optax.inject_hyperparams``, so
``state.hyperparams["learning_rate" | "weight_decay" | "last_layer_frozen"]`` hold the
values used by the latest update (for logging).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dinolg_jax.dino.schedules import DinoSchedules

LAST_LAYER = "last_layer"
Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _in_last_layer(path: tuple) -> bool:
    return any(_key_name(e) == LAST_LAYER for e in path)


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay (not biases, nothing below 2-D).

    Args:
      params: parameter pytree (arrays or ShapeDtypeStructs).

    Returns:
      Same-structure pytree of bools.
    """

    def rule(path: tuple, x: Any) -> bool:
        return _key_name(path[-1]) != "bias" and len(x.shape) >= 2

    return jax.tree_util.tree_map_with_path(rule, params)


def last_layer_labels(params: Any) -> Any:
    """``"last_layer"`` for leaves under a ``last_layer`` module, else ``"default"``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: LAST_LAYER if _in_last_layer(path) else "default", params
    )


def _zero_last_layer(frozen: jnp.ndarray) -> optax.GradientTransformation:
    """Zeroes last-layer gradients while ``frozen`` (stateless)."""

    def update(updates, state, params=None):
        del params

        def f(path, u):
            return jnp.where(frozen, jnp.zeros_like(u), u) if _in_last_layer(path) else u

        return jax.tree_util.tree_map_with_path(f, updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def clip_per_param(max_norm: float, eps: float = 1e-6) -> optax.GradientTransformation:
    """Clips every gradient tensor to norm ``max_norm`` on its own (official DINO's rule).

    ``g <- g * min(1, max_norm / (||g||_2 + eps))`` per leaf, the norm in float32.
    """

    def update(updates, state, params=None):
        del params

        def clip(u):
            norm = jnp.sqrt(jnp.sum(jnp.square(u.astype(jnp.float32))))
            factor = jnp.minimum(1.0, max_norm / (norm + eps))
            return (u * factor).astype(u.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


CLIP_MODES = ("per_param", "global")


def _hold_while(
    inner: optax.GradientTransformation, frozen: jnp.ndarray
) -> optax.GradientTransformation:
    """Runs ``inner`` but, while ``frozen``, returns zero updates and keeps its state."""

    def update(updates, state, params=None):
        new_updates, new_state = inner.update(updates, state, params)
        new_updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)
        new_state = jax.tree.map(lambda n, o: jnp.where(frozen, o, n), new_state, state)
        return new_updates, new_state

    return optax.GradientTransformation(inner.init, update)


def dino_optimizer(
    lr: Schedule | float,
    weight_decay: Schedule | float,
    *,
    freeze_last_layer_steps: int = 0,
    clip_norm: float | None = 3.0,
    clip_mode: str = "per_param",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Builds the DINO optimiser (see the module docstring).

    Args:
      lr: learning-rate schedule of the optimiser step (or a constant).
      weight_decay: weight-decay schedule (or a constant).
      freeze_last_layer_steps: number of first updates with a frozen "last_layer".
      clip_norm: gradient-norm bound; None or 0 disables clipping.
      clip_mode: ``"per_param"`` (each tensor on its own, official DINO) or ``"global"``.
      b1, b2, eps: Adam parameters.

    Returns:
      An optax transformation; ``update`` needs ``params``.
    """
    if freeze_last_layer_steps < 0:
        raise ValueError(f"freeze_last_layer_steps must be >= 0, got {freeze_last_layer_steps}")
    if clip_mode not in CLIP_MODES:
        raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")

    def factory(learning_rate, weight_decay, last_layer_frozen):
        def adamw():
            return optax.adamw(
                learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask
            )

        zero = _zero_last_layer(last_layer_frozen)
        if not clip_norm:
            parts = [zero]
        elif clip_mode == "per_param":
            parts = [clip_per_param(clip_norm), zero]
        else:
            parts = [zero, optax.clip_by_global_norm(clip_norm)]
        parts.append(
            optax.multi_transform(
                {"default": adamw(), LAST_LAYER: _hold_while(adamw(), last_layer_frozen)},
                last_layer_labels,
            )
        )
        return optax.chain(*parts)

    return optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(
        learning_rate=lr,
        weight_decay=weight_decay,
        last_layer_frozen=lambda count: count < freeze_last_layer_steps,
    )


def optimizer_from_schedules(
    schedules: DinoSchedules, *, clip_norm: float | None = 3.0, clip_mode: str = "per_param"
) -> optax.GradientTransformation:
    """The DINO optimiser driven by a :class:`DinoSchedules` (lr, wd, freeze length)."""
    return dino_optimizer(
        schedules.lr,
        schedules.weight_decay,
        freeze_last_layer_steps=schedules.freeze_last_layer_steps,
        clip_norm=clip_norm,
        clip_mode=clip_mode,
    )


def build_optimizer(config: Any, schedules: DinoSchedules) -> optax.GradientTransformation:
    """The DINO optimiser from a config: ``optim.clip_grad`` (3.0; 0 disables), ``optim.clip_mode``.

    Args:
      config: pretraining config.
      schedules: the run's schedules (lr, weight decay, freeze length).

    Returns:
      The optimiser of :func:`optimizer_from_schedules`.
    """
    clip = config.optim.clip_grad
    return optimizer_from_schedules(
        schedules,
        clip_norm=float(clip) if clip else None,
        clip_mode=str(config.optim.clip_mode),
    )
