"""The supervised ceiling: the pretraining's initial encoder trained on the slice labels.

How much of "this slice has calcium" an encoder of this architecture can carry, at this
input size, HU window and amount of data, when it is *told* which slices have it. The
ablation's ``supervised`` arm (``config.ceiling``) exports the result like a pretrained
encoder, and the same frozen probe reads it, so its probe ROC-AUC is the ceiling a
self-supervised arm is measured against, and the random initial encoder's the floor. When
the ceiling is barely above the floor, no pretraining can show a difference at that
scale: the experiment is too small, not the method wrong.

Training (deterministic for a config and seed):

* data: ``data.pipeline.labelled_dataset`` over ``splits.train``: whole slices at
  ``data.eval_size`` (0: the record size) in ``data.hu_window``, calcified slices at
  ``data.positive_fraction`` of the stream, flips / brightness / noise when
  ``data.augment``; global batch ``data.batch_size`` split over the mesh;
* model (``target``): ``"slice"``, the encoder read exactly as the probe's feature pass
  reads it (``eval.features.pooled_and_tokens`` with ``features.pooling`` and
  ``features.n_last_blocks``), at the export's compute dtype, then one linear logit;
  ``"patch"``, one linear logit per final patch token (:class:`PatchHead`), the slice
  logit their max: the encoder is also told *where* the calcium is, "this patch holds a
  calcium pixel" from the label masks, so it bounds what an encoder of this size can
  carry more tightly than the slice label alone (a ViT from scratch learns a lesion of
  a few pixels from one bit per slice slowly and by chance of seed: see
  docs/measurements.md#cpu-crop-geometry). Weights start from ``init_encoder`` (an
  encoder export), the head at zero;
* loss and optimiser: ``train.slice_classifier`` (binary cross-entropy, plus the
  class-balanced per-patch BCE for ``"patch"``; AdamW with warmup and cosine decay over
  ``optim.num_steps``, global-norm clipping).

Checkpoints, resume, SIGTERM and the non-finite stop are ``runtime.run.TrainingRun``'s
(``checkpoint``, ``log_every``, ``tensorboard``): a run killed mid-way resumes from its
last checkpoint, the data stream included, and ends at the same bytes.

Outputs under the workdir: ``encoder/`` (``runtime.checkpoint.save_encoder``: the
trained backbone, the init's model config), ``config.json``, ``metrics.jsonl``
(``runtime.metrics_log.MetricsLog``), ``checkpoints/`` and ``summary.json`` (``step``,
``status``, ``metrics``, ``first_loss``, ``val_roc_auc`` of the encoder with its own head
on ``splits.val``, ``params_checksum``, ``wall_s``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dinolg_jax.eval import features as features_lib
from dinolg_jax.models.vit import ViT, decode_variant
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime import run as run_lib
from dinolg_jax.train import slice_classifier as classifier_lib


def slice_logits(vit: ViT, params: Any, images: jax.Array, pooling: str) -> jax.Array:
    """One calcium logit per slice: the probe's pooled features -> a linear layer.

    Args:
      vit: the encoder (``features.encoder_model``).
      params: ``{"encoder": ViT params, "head": {"kernel": [F], "bias": []}}``.
      images: float32 [B, H, W, 1], normalised HU.
      pooling: one of ``features.POOLINGS``.

    Returns:
      float32 [B] logits.
    """
    pooled, _ = features_lib.pooled_and_tokens(vit, params["encoder"], images, 1, pooling)
    return pooled @ params["head"]["kernel"] + params["head"]["bias"]


@dataclasses.dataclass(frozen=True)
class EncoderHead:
    """The ceiling's classifier, ``(params, images [B, H, W, 1]) -> [B]`` logits
    (:func:`slice_logits`); hashable, so its jitted step is reused."""

    vit: ViT
    pooling: str

    def __call__(self, params: Any, images: jax.Array) -> jax.Array:
        return slice_logits(self.vit, params, images, self.pooling)


TARGETS = ("slice", "patch")


@dataclasses.dataclass(frozen=True)
class PatchHead:
    """The ``"patch"`` ceiling's classifier (``slice_classifier.DenseLogits``): one logit
    per final patch token, ``params = {"encoder", "head": {"kernel": [D], "bias": []}}``;
    the slice logit is their max, as the probe's ``"max"`` pooling reads the tokens."""

    vit: ViT

    def cell_logits(self, params: Any, images: jax.Array) -> jax.Array:
        """float32 [B, N] logits of the N = (H / patch) (W / patch) patch tokens."""
        _, aux = self.vit.apply({"params": params["encoder"]}, images, train=False)
        tokens = aux["tokens"][:, 1:].astype(jnp.float32)  # [B, N, D]
        return tokens @ params["head"]["kernel"] + params["head"]["bias"]

    def cell_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the patch grid of a ``height`` x ``width`` image."""
        patch = decode_variant(self.vit.variant).patch
        return height // patch, width // patch

    def __call__(self, params: Any, images: jax.Array) -> jax.Array:
        return self.cell_logits(params, images).max(axis=1)


def _head(vit: ViT, config: ml_collections.ConfigDict) -> EncoderHead | PatchHead:
    target = str(config.target)
    if target not in TARGETS:
        raise ValueError(f"supervised target must be one of {TARGETS}, got {target!r}")
    return PatchHead(vit) if target == "patch" else EncoderHead(vit, str(config.features.pooling))


def train_supervised(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains the ceiling encoder (module docstring) and exports it to ``workdir/encoder``.

    Args:
      config: ``seed``, ``target`` (``"slice"`` or ``"patch"``: module docstring),
        ``init_encoder`` (an encoder export or a pretraining workdir),
        ``splits`` (``train``, ``val``), ``data`` (``manifest``, ``hu_window``, ``eval_size``,
        ``batch_size``, ``positive_fraction``, ``augment`` and its ``*_prob`` /
        ``*_delta`` / ``noise_std``, ``seed``, ``shuffle``, loader settings;
        ``global_size``: the size ``attn_calcium_ratio`` is measured at), ``features``
        (``pooling``, ``n_last_blocks``), ``optim`` (``num_steps``, ``warmup_steps``,
        ``lr``, ``weight_decay``, ``clip_norm``), ``mesh``, ``log_every``, ``tensorboard``,
        ``checkpoint`` (``every_steps``, ``keep``, ``async_save``).
      workdir: output folder (created); an existing run there is resumed.

    Returns:
      The summary also written to ``workdir/summary.json``; ``status`` "preempted" (no
      export, no ``val_roc_auc``) after a SIGTERM.

    Raises:
      ValueError: a batch that does not split over the devices, a bad schedule, or a split
        without calcified slices.
      runtime.metrics_log.NonFiniteLossError: the loss became NaN/inf.
    """
    run = run_lib.TrainingRun(workdir, config)
    total = int(config.optim.num_steps)
    finished = run.finished(total)
    if finished is not None:  # a re-run of a finished run: nothing to do
        return finished
    encoder, model_config = ckpt_lib.load_encoder(config.init_encoder)
    vit = features_lib.encoder_model(model_config, int(config.features.n_last_blocks))
    head = _head(vit, config)
    image = jnp.asarray(classifier_lib.first_batch(config)["image"][:1])
    if isinstance(head, PatchHead):
        width = vit.apply({"params": encoder}, image, train=False)[1]["tokens"].shape[-1]
    else:
        width = features_lib.pooled_and_tokens(vit, encoder, image, 1, head.pooling)[0].shape[-1]

    def init_params() -> dict[str, Any]:
        zeros = {"kernel": np.zeros((width,), np.float32), "bias": np.zeros((), np.float32)}
        return {"encoder": encoder, "head": zeros}

    result = classifier_lib.train_classifier(run, config, head, init_params)
    params = result.state.params
    val_split = str(config.splits.val)
    val_auc = None
    if result.status == "done":
        mesh = mesh_lib.mesh_from_config(config.mesh)
        val_auc = classifier_lib.slice_roc_auc(
            head, params, config.data.manifest, val_split, config.data, mesh
        )
        ckpt_lib.save_encoder(
            run.workdir / ckpt_lib.ENCODER_DIR, params["encoder"], model_config, step=total
        )
    summary = classifier_lib.run_summary(result, total)
    return run.write_summary({**summary, "val_split": val_split, "val_roc_auc": val_auc})
