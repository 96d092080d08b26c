"""Is a pretraining run learning? Verdicts from the collapse monitors and the online eval.

Two questions, each answered from numbers the run already logs:

* **Collapse** (DINO paper, section 5.3): from the last logged ``teacher_entropy`` H,
  ``teacher_batch_entropy`` H_bar and ``teacher_kl`` = H_bar - H of the teacher's centred,
  sharpened output over K prototypes. The run has collapsed when the KL is below
  ``min_teacher_kl`` nats: every image gets the same distribution. It is *uniform*
  collapse when H_bar is above ``uniform_fraction * ln K`` and collapse onto one
  prototype when H_bar is below ``(1 - uniform_fraction) * ln K``.
* **Left its initialisation**: the online evaluation (``eval.online_eval``) scores
  the encoder and its random initialisation the same way; the run has left it when the
  best of the kNN and probe ROC-AUC gains is at least ``min_auc_gain``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections


def collapse_verdict(
    metrics: Mapping[str, float], out_dim: int, config: ml_collections.ConfigDict
) -> dict[str, Any]:
    """Collapse verdict of the last logged step.

    Args:
      metrics: a metrics line with ``teacher_entropy``, ``teacher_batch_entropy`` and
        ``teacher_kl`` (nats).
      out_dim: K, the number of prototypes.
      config: ``config.monitor`` (``configs/common.py:pretrain_config``).

    Returns:
      ``{"collapsed": bool, "kind": "uniform" | "one prototype" | "same output" | None,
      "teacher_kl", "teacher_entropy", "teacher_batch_entropy", "ln_k"}``.
    """
    ln_k = math.log(out_dim)
    kl = float(metrics["teacher_kl"])
    h_bar = float(metrics["teacher_batch_entropy"])
    collapsed = kl < float(config.min_teacher_kl)
    kind = None
    if collapsed:
        if h_bar > config.uniform_fraction * ln_k:
            kind = "uniform"
        elif h_bar < (1.0 - config.uniform_fraction) * ln_k:
            kind = "one prototype"
        else:
            kind = "same output"
    return {
        "collapsed": collapsed,
        "kind": kind,
        "teacher_kl": kl,
        "teacher_entropy": float(metrics["teacher_entropy"]),
        "teacher_batch_entropy": h_bar,
        "ln_k": ln_k,
    }


def init_verdict(
    online: Mapping[str, float], init: Mapping[str, float], config: ml_collections.ConfigDict
) -> dict[str, Any]:
    """Has the encoder left its random initialisation (online eval vs the init's)?

    Args:
      online, init: ``{"knn_roc_auc", "probe_roc_auc"}`` of the encoder and of its init.
      config: ``config.monitor`` (``configs/common.py:pretrain_config``).

    Returns:
      ``{"left_init": bool, "knn_gain", "probe_gain"}`` (ROC-AUC differences; a NaN AUC
      counts as no gain).
    """
    gains = {}
    for key in ("knn", "probe"):
        g = float(online[f"{key}_roc_auc"]) - float(init[f"{key}_roc_auc"])
        gains[f"{key}_gain"] = g if math.isfinite(g) else float("-inf")
    best = max(gains.values())
    return {"left_init": best >= float(config.min_auc_gain), **gains}


def warnings_for(collapse: Mapping[str, Any] | None, left: Mapping[str, Any] | None) -> list[str]:
    """One warning line per failed verdict (empty when the run looks healthy)."""
    out = []
    if collapse is not None and collapse["collapsed"]:
        out.append(
            f"the teacher has collapsed ({collapse['kind']}): KL(p_i || p_bar) = "
            f"{collapse['teacher_kl']:.3f} nats, batch entropy "
            f"{collapse['teacher_batch_entropy']:.3f} of ln K = {collapse['ln_k']:.3f}"
        )
    if left is not None and not left["left_init"]:
        out.append(
            "the encoder has not left its random initialisation: online ROC-AUC gains "
            f"kNN {left['knn_gain']:+.3f}, probe {left['probe_gain']:+.3f}"
        )
    return out
