"""The range of every count, size, seed and rate a config may hold, checked up front.

A tool calls :func:`check` on its config before any work (``cli.UsageError``: one
``error:`` line, exit status 2), so ``--config.data.batch_size=0`` or a negative seed is
refused by name instead of failing deep inside a run (or, worse, running). The rules go
by a key's last name, wherever it sits (``data.batch_size``, ``pretrain.data.batch_size``
of the ablation, ``probe.optim.batch_size``): :data:`RULES`. Keys not named there are not
checked here (their own code checks them).
"""

from __future__ import annotations

import math
from typing import Any

from dinolg_jax.runtime.cli import UsageError

_POSITIVE = (
    "batch_size", "epochs", "num_epochs", "every_steps", "log_every", "keep",
    "global_size", "local_size", "size", "probe_steps", "worker_buffer_size",
    "read_buffer_size", "read_threads", "workers", "shards_per_split", "n_gated", "n_global",
    "n_boot", "k", "depth", "heads", "filters", "out_dim", "hidden_dim", "bottleneck_dim",
    "lr", "max_bank", "max_query", "max_rows", "token_pool", "student_temp", "teacher_temp",
    "warmup_teacher_temp", "temperature",
)  # fmt: skip
_NON_NEGATIVE = (
    "seed", "num_steps", "eval_every", "eval_size", "seg_batch_size", "worker_count",
    "warmup_steps", "warmup_epochs", "warmup_teacher_temp_epochs", "fsdp_min_size",
    "pad_tokens_to", "n_local", "n_local_random", "n_local_guided", "n_nongated",
    "n_last_blocks", "weight_decay", "weight_decay_end", "min_lr", "freeze_last_layer",
    "koleo_weight", "drop_path_rate", "grad_clip", "step_sleep_s",
)  # fmt: skip
_FRACTION = (
    "positive_fraction", "pretrain_positive_fraction", "uniform_fraction", "hflip_prob",
    "vflip_prob", "noise_prob", "brightness_prob", "momentum_teacher", "center_momentum",
    "background_prior",
)  # fmt: skip

# last key name -> (lowest, lowest allowed?, highest or None, the rule in words)
RULES: dict[str, tuple[float, bool, float | None, str]] = {
    **{k: (0.0, False, None, "must be > 0") for k in _POSITIVE},
    **{k: (0.0, True, None, "must be >= 0") for k in _NON_NEGATIVE},
    **{k: (0.0, True, 1.0, "must be in [0, 1]") for k in _FRACTION},
}


def _leaves(tree: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [kv for k, v in tree.items() for kv in _leaves(v, f"{prefix}.{k}")]
    return [(prefix, tree)]


def violations(config: Any, flag: str = "--config") -> list[str]:
    """Every number of ``config`` (a ConfigDict or dict) outside its :data:`RULES` range,
    as ``--config.a.b=v must be ...`` texts, sorted by key."""
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = []
    for path, value in sorted(_leaves(tree, flag)):
        rule = RULES.get(path.rsplit(".", 1)[-1])
        if rule is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        low, inclusive, high, words = rule
        bad = not math.isfinite(value) or value < low or (value == low and not inclusive)
        if bad or (high is not None and value > high):
            out.append(f"{path}={value} {words}")
    return out


def check(config: Any, flag: str = "--config") -> None:
    """Raises ``cli.UsageError`` naming every out-of-range value of ``config`` (see
    :func:`violations`); nothing when all are in range."""
    bad = violations(config, flag)
    if bad:
        raise UsageError("; ".join(bad))
