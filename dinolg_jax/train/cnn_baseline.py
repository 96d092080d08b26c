"""The ablation's "signal in the data" yardstick: a small supervised CNN slice classifier.

``models.slice_cnn.SliceCNN`` trained on the slice labels of the train split exactly as
the ceiling is (``train.slice_classifier``: same slices, HU window, size, calcified
share, optimiser and schedule), from a seeded random init, then read out on every slice
of the val and test splits. When the CNN reads calcium and the ViT ceiling does not,
the regime hides the lesions from the ViT's tokens, not from the data.

Outputs under the workdir: ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and
``summary.json`` (``step``, ``status``, ``metrics``, ``first_loss``, ``val_roc_auc``,
``test_roc_auc``, ``params_checksum``, ``wall_s``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from dinolg_jax.models.slice_cnn import CnnLogits, SliceCNN
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime import run as run_lib
from dinolg_jax.train import slice_classifier as classifier_lib


def train_cnn_baseline(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains the CNN yardstick and reads it out on ``splits.val`` and ``splits.test``.

    Args:
      config: ``seed`` (the init), ``channels`` (the four convolutions'), and what
        ``train.slice_classifier.train_classifier`` reads (``data``, ``splits``, ``optim``,
        ``mesh``, ``log_every``, ``tensorboard``, ``checkpoint``).
      workdir: output folder (created); an existing run there is resumed.

    Returns:
      The summary, also ``workdir/summary.json``; ``status`` "preempted" (no read-out)
      after a SIGTERM.
    """
    run = run_lib.TrainingRun(workdir, config)
    total = int(config.optim.num_steps)
    finished = run.finished(total)
    if finished is not None:
        return finished
    logits = CnnLogits(SliceCNN(channels=tuple(int(c) for c in config.channels)))
    image = jnp.asarray(classifier_lib.first_batch(config)["image"][:1])

    def init_params() -> Any:
        return logits.model.init(jax.random.PRNGKey(int(config.seed)), image)["params"]

    result = classifier_lib.train_classifier(run, config, logits, init_params)
    params = result.state.params
    read_out = {"val_roc_auc": None, "test_roc_auc": None}
    if result.status == "done":
        mesh = mesh_lib.mesh_from_config(config.mesh)
        for split in ("val", "test"):
            read_out[f"{split}_roc_auc"] = classifier_lib.slice_roc_auc(
                logits, params, config.data.manifest, str(config.splits[split]), config.data, mesh
            )
    return run.write_summary({**classifier_lib.run_summary(result, total), **read_out})
