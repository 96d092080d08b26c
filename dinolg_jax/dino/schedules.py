"""Per-step DINO schedules: learning rate, weight decay, teacher momentum and temperature.

Each schedule is a frozen dataclass: calling it on a step (int or traced int array)
returns a float32 ``jnp`` scalar, usable inside ``jax.jit`` and as an optax schedule;
``.numpy(step)`` gives the same values in float64 numpy for logging and plots.

Cosine schedule with linear warmup (``W`` warmup steps, ``T`` total steps)::

    step < W:      start_warmup + (base - start_warmup) * step / W
    W <= step:     final + (base - final) * (1 + cos(pi * p)) / 2,
                   p = min((step - W) / max(T - 1 - W, 1), 1)

so step 0 gives ``start_warmup`` (``base`` when ``W = 0``), step ``W`` gives ``base``,
the last step ``T - 1`` gives ``final`` exactly, and later steps stay at ``final``.
(Official DINO's numpy ``cosine_scheduler`` is the same curve up to one step of offset:
its warmup ``linspace`` reaches ``base`` at step ``W - 1`` and its cosine stops one step
short of ``final``.)

The DINO recipe (Caron et al. 2021, official ``main_dino.py``) as built by
:meth:`DinoSchedules.create`:

* lr: ``base_lr * global_batch / 256``, linear warmup from 0, cosine to ``min_lr``;
* weight decay: cosine 0.04 -> 0.4 (no warmup);
* teacher EMA momentum: cosine 0.996 -> 1;
* teacher temperature: linear 0.04 -> 0.07 over ``warmup_teacher_temp_epochs``, then
  constant. Official DINO steps it once per epoch; here it moves every step.
* the head's last layer is frozen for ``freeze_last_layer`` epochs (used by
  ``dino/optim.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np


def _cosine(xp: Any, step: Any, base, final, total, warmup, start) -> Any:
    step = xp.asarray(step, dtype=xp.float32 if xp is jnp else np.float64)
    warm = start + (base - start) * step / max(warmup, 1)
    p = xp.clip((step - warmup) / max(total - 1 - warmup, 1), 0.0, 1.0)
    cos = final + 0.5 * (base - final) * (1.0 + xp.cos(np.pi * p))
    return xp.where(step < warmup, warm, cos)


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
    """Linear warmup then half-cosine decay; see the module docstring."""

    base: float  # value at the end of warmup
    final: float  # value at step total_steps - 1 and after
    total_steps: int  # schedule length T
    warmup_steps: int = 0  # linear warmup length W
    start_warmup: float = 0.0  # value at step 0 when W > 0

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={self.total_steps}], "
                f"got {self.warmup_steps}"
            )

    def _args(self) -> tuple:
        return (self.base, self.final, self.total_steps, self.warmup_steps, self.start_warmup)

    def __call__(self, step: Any) -> jnp.ndarray:
        """float32 value at ``step`` (int or int array; jit-friendly)."""
        return _cosine(jnp, step, *self._args())

    def numpy(self, step: Any) -> np.ndarray:
        """float64 numpy value(s) at ``step``."""
        return _cosine(np, step, *self._args())


@dataclasses.dataclass(frozen=True)
class LinearWarmupSchedule:
    """``start -> end`` linearly over ``warmup_steps`` steps, then constant ``end``."""

    start: float  # value at step 0
    end: float  # value from step warmup_steps on
    warmup_steps: int  # ramp length (0: constant end)

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def _eval(self, xp: Any, step: Any) -> Any:
        step = xp.asarray(step, dtype=xp.float32 if xp is jnp else np.float64)
        frac = xp.clip(step / max(self.warmup_steps, 1), 0.0, 1.0)
        if self.warmup_steps == 0:
            frac = xp.ones_like(step)
        return self.start + (self.end - self.start) * frac

    def __call__(self, step: Any) -> jnp.ndarray:
        """float32 value at ``step`` (jit-friendly)."""
        return self._eval(jnp, step)

    def numpy(self, step: Any) -> np.ndarray:
        """float64 numpy value(s) at ``step``."""
        return self._eval(np, step)


def cosine_schedule(
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    start_warmup: float = 0.0,
) -> CosineSchedule:
    """Builds a :class:`CosineSchedule` (call it with a step; ``.numpy`` for numpy)."""
    return CosineSchedule(base, final, total_steps, warmup_steps, start_warmup)


@dataclasses.dataclass(frozen=True)
class DinoSchedules:
    """All per-step schedules of one DINO run."""

    lr: CosineSchedule  # learning rate (already scaled by global_batch / 256)
    weight_decay: CosineSchedule  # AdamW weight decay
    teacher_momentum: CosineSchedule  # teacher EMA momentum
    teacher_temp: LinearWarmupSchedule  # teacher softmax temperature
    steps_per_epoch: int  # optimiser steps per epoch
    total_steps: int  # epochs * steps_per_epoch
    freeze_last_layer_steps: int  # steps with a frozen head last layer

    @classmethod
    def create(
        cls,
        *,
        epochs: int,
        steps_per_epoch: int,
        global_batch: int,
        base_lr: float = 5e-4,
        min_lr: float = 1e-6,
        warmup_epochs: float = 10,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        momentum_teacher: float = 0.996,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: float = 30,
        freeze_last_layer: float = 1,
    ) -> DinoSchedules:
        """Builds the DINO schedules; epoch counts may be fractional (rounded to steps).

        A run shorter than its warmups keeps the teacher-temperature slope (the ramp is
        cut off, as in official DINO) but squeezes the lr warmup into the run (official
        DINO refuses such a run).

        Args:
          epochs: training length in epochs.
          steps_per_epoch: optimiser steps per epoch (>= 1).
          global_batch: images per step over all devices.
          base_lr: lr per 256 images at the end of warmup.
          min_lr: final lr (not scaled).
          warmup_epochs: lr warmup length.
          weight_decay, weight_decay_end: cosine weight-decay endpoints.
          momentum_teacher: initial teacher EMA momentum (ends at 1).
          warmup_teacher_temp, teacher_temp: teacher temperature ramp endpoints.
          warmup_teacher_temp_epochs: ramp length.
          freeze_last_layer: epochs with the head's last layer frozen.

        Returns:
          The schedules.
        """
        if epochs <= 0 or steps_per_epoch < 1 or global_batch < 1:
            raise ValueError(
                f"need epochs > 0, steps_per_epoch >= 1, global_batch >= 1; got {epochs}, "
                f"{steps_per_epoch}, {global_batch}"
            )
        total = max(1, round(epochs * steps_per_epoch))

        def steps(n_epochs: float) -> int:
            return max(0, round(n_epochs * steps_per_epoch))

        return cls(
            lr=CosineSchedule(
                base_lr * global_batch / 256.0, min_lr, total, min(total, steps(warmup_epochs))
            ),
            weight_decay=CosineSchedule(weight_decay, weight_decay_end, total),
            teacher_momentum=CosineSchedule(momentum_teacher, 1.0, total),
            teacher_temp=LinearWarmupSchedule(
                warmup_teacher_temp, teacher_temp, steps(warmup_teacher_temp_epochs)
            ),
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            freeze_last_layer_steps=steps(freeze_last_layer),
        )

    @classmethod
    def from_config(cls, config: Any, steps_per_epoch: int) -> DinoSchedules:
        """Builds the schedules from a config.

        Keys read, every one required (``ml_collections`` or any attribute tree; the values
        of ``configs/common.py:pretrain_config``): ``num_epochs``, ``data.batch_size`` (the
        global batch), ``optim.lr`` (per 256 images), ``optim.min_lr``,
        ``optim.warmup_epochs``, ``optim.weight_decay``, ``optim.weight_decay_end``,
        ``optim.freeze_last_layer``, ``dino.momentum_teacher``, ``dino.warmup_teacher_temp``,
        ``dino.teacher_temp``, ``dino.warmup_teacher_temp_epochs``.

        Raises:
          KeyError: a key is missing (naming it).
        """
        keys = {
            "epochs": "num_epochs",
            "global_batch": "data.batch_size",
            "base_lr": "optim.lr",
            "min_lr": "optim.min_lr",
            "warmup_epochs": "optim.warmup_epochs",
            "weight_decay": "optim.weight_decay",
            "weight_decay_end": "optim.weight_decay_end",
            "freeze_last_layer": "optim.freeze_last_layer",
            "momentum_teacher": "dino.momentum_teacher",
            "warmup_teacher_temp": "dino.warmup_teacher_temp",
            "teacher_temp": "dino.teacher_temp",
            "warmup_teacher_temp_epochs": "dino.warmup_teacher_temp_epochs",
        }
        kwargs = {arg: _get(config, key) for arg, key in keys.items()}
        return cls.create(steps_per_epoch=steps_per_epoch, **kwargs)

    def values(self, step: int) -> dict[str, float]:
        """Every schedule's value at ``step`` as Python floats (for logging)."""
        return {
            "lr": float(self.lr.numpy(step)),
            "weight_decay": float(self.weight_decay.numpy(step)),
            "teacher_momentum": float(self.teacher_momentum.numpy(step)),
            "teacher_temp": float(self.teacher_temp.numpy(step)),
        }


def _get(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        try:
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        except (AttributeError, KeyError):
            raise KeyError(f"config has no {dotted!r} (needed by DinoSchedules)") from None
    return node
