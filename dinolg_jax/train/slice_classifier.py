"""Training a whole-slice calcium classifier: the shared part of the ceiling and the CNN.

A slice classifier is a function ``logits(params, images [B, H, W, 1]) -> [B]`` (one
calcium logit per slice) with its initial params. :func:`train_classifier` trains it
with binary cross-entropy on ``data.pipeline.labelled_dataset`` (calcified slices at
``data.positive_fraction`` of the stream, negatives drawn afresh each epoch) inside a
``runtime.run.TrainingRun`` (checkpoints, resume, SIGTERM, the non-finite stop);
:func:`slice_roc_auc` reads it out on every slice of a split. Optimiser
(:func:`classifier_optimizer`): global-norm clipping, then AdamW on a linear warmup +
cosine decay to 0 over ``optim.num_steps`` (:func:`classifier_schedule`, logged as ``lr``).

The users: ``train.supervised`` (the frozen-probe encoder trained on the labels: the
ablation's ceiling) and ``train.cnn_baseline`` (a small CNN: the signal in the data).

A classifier may also be *dense* (:class:`DenseLogits`: one logit per cell of a
``cells`` grid over the slice, the slice logit their max). Its loss adds to the slice
BCE a class-balanced BCE of every cell against "this cell holds a calcium pixel"
(``eval.attention.calcium_patch_mask`` of the label masks the stream already carries):
:func:`cell_bce_loss`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dinolg_jax.data import pipeline
from dinolg_jax.eval import attention as attention_lib
from dinolg_jax.eval import features as features_lib
from dinolg_jax.eval import metrics as metrics_lib
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime import run as run_lib

Logits = Callable[[Any, jax.Array], jax.Array]


@runtime_checkable
class DenseLogits(Protocol):
    """A slice classifier that scores each cell of a grid over the slice.

    ``cell_logits(params, images [B, H, W, 1]) -> float [B, rows * cols]`` (row-major
    cells, like a ViT's patch tokens); ``cell_grid(height, width) -> (rows, cols)``;
    calling it gives the slice logits ``[B]``, the max over its cells.
    """

    def cell_logits(self, params: Any, images: jax.Array) -> jax.Array: ...

    def cell_grid(self, height: int, width: int) -> tuple[int, int]: ...

    def __call__(self, params: Any, images: jax.Array) -> jax.Array: ...


@flax.struct.dataclass
class ClassifierState:
    """A slice classifier's train state: ``step`` int32 [], ``params``, ``opt_state``."""

    step: jax.Array
    params: Any
    opt_state: Any


def bce_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy; logits float [B], labels bool/0-1 [B] -> scalar."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)))


def cell_bce_loss(logits: jax.Array, cells: jax.Array) -> jax.Array:
    """Class-balanced BCE over every cell of the batch: calcium cells and the others each
    weigh half, whatever their counts (a batch without calcium cells: the others alone).

    Args:
      logits: float [B, N] cell logits.
      cells: bool/0-1 [B, N], True where the cell holds a calcium pixel.

    Returns:
      Scalar: ``0.5 mean(BCE | calcium) + 0.5 mean(BCE | other)``.
    """
    y = cells.astype(jnp.float32)
    per = optax.sigmoid_binary_cross_entropy(logits, y)
    n_pos, n_neg = y.sum(), (1.0 - y).sum()
    pos = jnp.where(n_pos > 0, (per * y).sum() / jnp.maximum(n_pos, 1.0), 0.0)
    neg = (per * (1.0 - y)).sum() / jnp.maximum(n_neg, 1.0)
    return jnp.where(n_pos > 0, 0.5 * (pos + neg), neg)


def classifier_schedule(optim: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning rate per step: ``optim.warmup_steps`` of linear warmup to ``optim.lr``,
    then a cosine decay to 0 at ``optim.num_steps``."""
    steps, warmup = int(optim.num_steps), int(optim.warmup_steps)
    if steps < 1 or not 0 <= warmup < steps:
        raise ValueError(
            f"need num_steps >= 1 and 0 <= warmup_steps < num_steps, got {steps}, {warmup}"
        )
    return optax.warmup_cosine_decay_schedule(0.0, float(optim.lr), warmup, steps, 0.0)


def classifier_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping (``optim.clip_norm``), then AdamW (``optim.lr``,
    ``optim.weight_decay``) on :func:`classifier_schedule`."""
    return optax.chain(
        optax.clip_by_global_norm(float(optim.clip_norm)),
        optax.adamw(classifier_schedule(optim), weight_decay=float(optim.weight_decay)),
    )


def make_train_step(
    logits: Logits, tx: optax.GradientTransformation, schedule: optax.Schedule | None = None
) -> Callable[[ClassifierState, dict[str, jax.Array]], tuple[ClassifierState, dict[str, Any]]]:
    """The pure step: ``(state, {"image" [B, H, W, 1], "labels" [B] bool}) -> (state,
    metrics)``; metrics ``loss`` (BCE), ``accuracy``, ``grad_norm`` and, given
    ``schedule``, ``lr`` (the rate this step applied). A
    :class:`DenseLogits` classifier also takes ``"cells"`` bool [B, N] and adds
    :func:`cell_bce_loss` (metric ``cell_loss``)."""
    dense = isinstance(logits, DenseLogits)

    def step(state: ClassifierState, batch: dict[str, jax.Array]):
        def loss_fn(p):
            if not dense:
                out = logits(p, batch["image"])
                return bce_loss(out, batch["labels"]), (out, {})
            cells = logits.cell_logits(p, batch["image"])
            out = cells.max(axis=1)
            cell_loss = cell_bce_loss(cells, batch["cells"])
            return bce_loss(out, batch["labels"]) + cell_loss, (out, {"cell_loss": cell_loss})

        (loss, (out, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        accuracy = jnp.mean((out > 0) == batch["labels"])
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
        metrics.update(extra)
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        params = optax.apply_updates(state.params, updates)
        return ClassifierState(state.step + 1, params, opt_state), metrics

    return step


@functools.lru_cache(maxsize=4)
def _step_program(logits: Logits, tx: Any, mesh: jax.sharding.Mesh, schedule: Any = None):
    """The jitted step, state replicated and donated, the batch split over the mesh
    (cached per classifier, optimiser, mesh and logged schedule: ``logits`` must hash by
    value)."""
    batch = mesh_lib.batch_sharding(mesh)
    keys = ("image", "labels", "cells") if isinstance(logits, DenseLogits) else ("image", "labels")
    step = make_train_step(logits, tx, schedule)
    return run_lib.jit_step(step, mesh, mesh_lib.replicated(mesh), dict.fromkeys(keys, batch))


def slice_roc_auc(
    logits: Logits,
    params: Any,
    manifest: str,
    split: str,
    data: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> float | None:
    """ROC-AUC of the classifier on every slice of ``split`` (None with one class only)."""
    rep, batch = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    fn = jax.jit(logits, in_shardings=(rep, batch), out_shardings=batch)
    gather = features_lib.gather_rows
    scores, labels = [], []
    for b in pipeline.eval_dataset(manifest, split, data):
        out = gather(fn(params, mesh_lib.put_batch({"image": b["image"]}, mesh)["image"]))
        valid = gather(np.asarray(b["valid"], bool))
        scores.append(out[valid])
        labels.append(gather(np.asarray(b["has_calcium"], bool))[valid])
    y = np.concatenate(labels)
    if y.all() or not y.any():
        return None
    return float(metrics_lib.roc_auc(np.concatenate(scores), y))


def first_batch(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The first training batch (its images give the classifier's input shape)."""
    data = config.data
    return next(iter(pipeline.labelled_dataset(data.manifest, config.splits.train, data)))


def train_classifier(
    run: run_lib.TrainingRun,
    config: ml_collections.ConfigDict,
    logits: Logits,
    init_params: Callable[[], Any],
) -> run_lib.LoopResult:
    """Trains ``logits`` from ``init_params()`` for ``config.optim.num_steps`` steps.

    Args:
      run: the run (its workdir holds the checkpoints; a re-run resumes).
      config: ``data`` (``manifest``, ``batch_size``, ``positive_fraction``, ``augment``
        and its settings, ``seed``, ...), ``splits.train``, ``optim``, ``mesh``.
      logits: the classifier (hashable by value, e.g. a frozen dataclass or Linen module).
      init_params: the initial params (host or device arrays).

    Raises:
      ValueError: a batch that does not split over the devices, a bad schedule, or a
        train split without calcified slices.
    """
    mesh = mesh_lib.mesh_from_config(config.mesh)
    data = config.data
    if int(data.batch_size) % mesh.devices.size:
        raise ValueError(f"batch {data.batch_size} does not split over {mesh.devices.size} devices")
    tx = classifier_optimizer(config.optim)
    rep = mesh_lib.replicated(mesh)

    def init_state() -> ClassifierState:
        params = jax.device_put(init_params(), rep)
        opt_state = jax.jit(tx.init, out_shardings=rep)(params)
        return ClassifierState(jax.device_put(jnp.zeros((), jnp.int32), rep), params, opt_state)

    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
        jax.eval_shape(init_state),
    )
    train = pipeline.labelled_dataset(
        data.manifest, config.splits.train, data, augment=bool(data.augment)
    )
    state, iterator = run.restore_or_init(abstract, init_state, iter(train))
    jitted = _step_program(logits, tx, mesh, classifier_schedule(config.optim))

    def step_fn(state: ClassifierState, batch: dict[str, Any]):
        host = {"image": batch["image"], "labels": batch["has_calcium"]}
        if isinstance(logits, DenseLogits):
            grid = logits.cell_grid(*batch["image"].shape[1:3])
            host["cells"] = attention_lib.calcium_patch_mask(batch["labels"], grid)
        return jitted(state, mesh_lib.put_batch(host, mesh))

    chosen = pipeline.labelled_indices(
        data.manifest, config.splits.train, data.positive_fraction, data.seed
    )
    return run.train(
        state,
        iterator,
        step_fn,
        total_steps=int(config.optim.num_steps),
        steps_per_epoch=max(1, len(chosen) // int(data.batch_size)),
    )


def run_summary(result: run_lib.LoopResult, total_steps: int) -> dict[str, Any]:
    """The summary fields every slice classifier writes: ``step``, ``total_steps``,
    ``status``, ``metrics`` (last line), ``first_loss``, ``params_checksum``."""
    return {
        "step": result.step,
        "total_steps": total_steps,
        "status": result.status,
        "metrics": result.log.last,
        "first_loss": result.log.first_loss,
        "params_checksum": ckpt_lib.params_checksum(result.state.params),
    }
