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
* model: the encoder read exactly as the probe's feature pass reads it
  (``eval.features.pooled_and_tokens`` with ``features.pooling`` and
  ``features.n_last_blocks``), at the export's compute dtype, then one linear logit;
  weights start from ``init_encoder`` (an encoder export), the head at zero;
* loss: binary cross-entropy; AdamW (``optim.lr``, ``optim.weight_decay``) with
  ``optim.warmup_steps`` of linear warmup then cosine decay to 0 over ``optim.num_steps``,
  gradients clipped to global norm ``optim.clip_norm``.

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

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dinolg_jax.data import pipeline
from dinolg_jax.eval import features as features_lib
from dinolg_jax.eval import metrics as metrics_lib
from dinolg_jax.models.vit import ViT
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime import run as run_lib


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


def bce_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy; logits float [B], labels bool/0-1 [B] -> scalar."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)))


@flax.struct.dataclass
class CeilingState:
    """The ceiling's train state: ``step`` int32 [], ``params`` ``{"encoder", "head"}``
    (see :func:`slice_logits`), ``opt_state`` (optax)."""

    step: jax.Array
    params: Any
    opt_state: Any


def ceiling_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on a warmup + cosine schedule (module docstring)."""
    steps, warmup = int(optim.num_steps), int(optim.warmup_steps)
    if steps < 1 or not 0 <= warmup < steps:
        raise ValueError(
            f"need num_steps >= 1 and 0 <= warmup_steps < num_steps, got {steps}, {warmup}"
        )
    schedule = optax.warmup_cosine_decay_schedule(0.0, float(optim.lr), warmup, steps, 0.0)
    return optax.chain(
        optax.clip_by_global_norm(float(optim.clip_norm)),
        optax.adamw(schedule, weight_decay=float(optim.weight_decay)),
    )


def make_train_step(
    vit: ViT, tx: optax.GradientTransformation, pooling: str
) -> Callable[[CeilingState, dict[str, jax.Array]], tuple[CeilingState, dict[str, jax.Array]]]:
    """The pure step: ``(state, {"image" [B, H, W, 1], "labels" [B] bool}) -> (state,
    metrics)``; metrics ``loss`` (BCE), ``accuracy``, ``grad_norm``."""

    def step(state: CeilingState, batch: dict[str, jax.Array]):
        def loss_fn(p):
            logits = slice_logits(vit, p, batch["image"], pooling)
            return bce_loss(logits, batch["labels"]), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        accuracy = jnp.mean((logits > 0) == batch["labels"])
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
        params = optax.apply_updates(state.params, updates)
        return CeilingState(state.step + 1, params, opt_state), metrics

    return step


@functools.lru_cache(maxsize=4)
def _step_program(vit: ViT, tx: Any, mesh: jax.sharding.Mesh, pooling: str):
    """The jitted step, state replicated and donated, the batch split over the mesh."""
    batch = mesh_lib.batch_sharding(mesh)
    return run_lib.jit_step(
        make_train_step(vit, tx, pooling),
        mesh,
        mesh_lib.replicated(mesh),
        {"image": batch, "labels": batch},
    )


def head_roc_auc(
    vit: ViT,
    params: Any,
    manifest: str,
    split: str,
    data: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    pooling: str,
) -> float | None:
    """ROC-AUC of the trained encoder with its own head on every slice of ``split``
    (None when the split has one class only)."""
    rep, batch = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    fn = jax.jit(
        functools.partial(slice_logits, vit, pooling=pooling),
        in_shardings=(rep, batch),
        out_shardings=batch,
    )
    gather = features_lib.gather_rows
    scores, labels = [], []
    for b in pipeline.eval_dataset(manifest, split, data):
        logits = gather(fn(params, mesh_lib.put_batch({"image": b["image"]}, mesh)["image"]))
        valid = gather(np.asarray(b["valid"], bool))
        scores.append(logits[valid])
        labels.append(gather(np.asarray(b["has_calcium"], bool))[valid])
    y = np.concatenate(labels)
    if y.all() or not y.any():
        return None
    return float(metrics_lib.roc_auc(np.concatenate(scores), y))


def train_supervised(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains the ceiling encoder (module docstring) and exports it to ``workdir/encoder``.

    Args:
      config: ``seed``, ``init_encoder`` (an encoder export or a pretraining workdir),
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
    mesh = mesh_lib.mesh_from_config(config.mesh)
    data = config.data
    if int(data.batch_size) % mesh.devices.size:
        raise ValueError(f"batch {data.batch_size} does not split over {mesh.devices.size} devices")
    total = int(config.optim.num_steps)
    finished = run.finished(total)
    if finished is not None:  # a re-run of a finished run: nothing to do
        return finished
    encoder, model_config = ckpt_lib.load_encoder(config.init_encoder)
    vit = features_lib.encoder_model(model_config, int(config.features.n_last_blocks))
    pooling = str(config.features.pooling)
    tx = ceiling_optimizer(config.optim)
    train = pipeline.labelled_dataset(
        data.manifest, config.splits.train, data, augment=bool(data.augment)
    )
    first = next(iter(train))
    width = features_lib.pooled_and_tokens(
        vit, encoder, jnp.asarray(first["image"][:1]), 1, pooling
    )[0].shape[-1]
    rep = mesh_lib.replicated(mesh)

    def init_state() -> CeilingState:
        params = {
            "encoder": encoder,
            "head": {"kernel": np.zeros((width,), np.float32), "bias": np.zeros((), np.float32)},
        }
        params = jax.device_put(params, rep)
        opt_state = jax.jit(tx.init, out_shardings=rep)(params)
        return CeilingState(jax.device_put(jnp.zeros((), jnp.int32), rep), params, opt_state)

    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
        jax.eval_shape(init_state),
    )
    state, iterator = run.restore_or_init(abstract, init_state, iter(train))
    jitted = _step_program(vit, tx, mesh, pooling)

    def step_fn(state: CeilingState, batch: dict[str, Any]):
        on_device = mesh_lib.put_batch(
            {"image": batch["image"], "labels": batch["has_calcium"]}, mesh
        )
        return jitted(state, on_device)

    chosen = pipeline.labelled_indices(
        data.manifest, config.splits.train, data.positive_fraction, data.seed
    )
    result = run.train(
        state,
        iterator,
        step_fn,
        total_steps=total,
        steps_per_epoch=max(1, len(chosen) // int(data.batch_size)),
    )
    params = result.state.params
    val_split = str(config.splits.val)
    val_auc = None
    if result.status == "done":
        val_auc = head_roc_auc(vit, params, data.manifest, val_split, data, mesh, pooling)
        ckpt_lib.save_encoder(
            run.workdir / ckpt_lib.ENCODER_DIR, params["encoder"], model_config, step=total
        )
    return run.write_summary(
        {
            "step": result.step,
            "total_steps": total,
            "status": result.status,
            "metrics": result.log.last,
            "first_loss": result.log.first_loss,
            "val_split": val_split,
            "val_roc_auc": val_auc,
            "params_checksum": ckpt_lib.params_checksum(params),
        }
    )
