"""Segmentation training (U-Net family): loss, sharded step, Orbax resume, per-artery eval.

Loss (:func:`segmentation_loss`), for a foreground of ~0.04 % of the pixels::

    L = ce_weight * CE_w + dice_weight * mean_{c in present} (1 - Dice_c)

``CE_w`` is pixel cross-entropy weighted by ``class_weights[label]`` and normalised by the
summed weights (PyTorch's weighted mean); ``Dice_c`` is the soft Dice of class ``c`` over
the whole batch, ``(2 sum p*y + s) / (sum p + sum y + s)`` with smoothing ``s``, averaged
over the arteries present in the batch (a batch without calcium has no Dice term). The
batch Dice is what copes with the imbalance (every vessel weighs the same whatever its
pixel count); the weighted CE keeps gradients on every pixel and penalises calcium
predicted where there is none. Averaging over present classes only matters: with the
smoothing, an absent class scores Dice ~1 by predicting nothing, and averaging it in
rewards an all-background net with a Dice loss of ~0.5 on typical batches. Focal loss is
not used. The models' heads start at p(background) = ``background_prior`` (0.999), and
the arteries' CE weight defaults to 100 (background 1): 10 leaves the argmax
all-background (docs/measurements.md#segmentation-class-weights).

Training data: ``data.pipeline.labelled_dataset`` over the train split, i.e. every slice
with calcium plus slices without so that ``config.data.positive_fraction`` of the set has
calcium (the negatives drawn once from the seed), shuffled and repeated, optionally with
label-preserving augmentation. The global batch is split over every device of the mesh
(data parallel); the state is replicated (or FSDP-sharded by the mesh rule) and donated.
Checkpoints (:class:`dinolg_jax.runtime.checkpoint.Checkpointer`): the state, the Grain
iterator state and the config, by step; a re-run in the same workdir resumes exactly.
The loop, its metrics log, lagged non-finite check and SIGTERM handling are
``runtime.run.TrainingRun``'s, as in pretraining.

Evaluation (:func:`evaluate`): per-artery IoU and Dice from pixel counts pooled over the
whole test split (``data.pipeline.eval_dataset``, every slice in order), once over all
slices and once over the slices with calcium (the paper's Table 5), through
``eval.metrics.iou_dice_from_counts``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import pipeline, run_manifest, split_grid
from dinolg_jax.eval.segment_eval import evaluate
from dinolg_jax.models.segmenters import build_segmenter
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime import run as run_lib


@flax.struct.dataclass
class SegState:
    """Train state: ``step`` int32 [], ``params``, ``opt_state``."""

    step: jax.Array
    params: Any
    opt_state: Any


def segmentation_loss(
    logits: jax.Array,
    labels: jax.Array,
    class_weights: jax.Array,
    *,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted cross-entropy + batch soft Dice over the foreground classes.

    Args:
      logits: [B, H, W, K] float.
      labels: [B, H, W] int in [0, K).
      class_weights: [K] CE weight per class (background first).
      ce_weight, dice_weight: term weights.
      smooth: Dice smoothing ``s`` (pixels).

    Returns:
      (scalar loss, {"ce", "dice_loss", "dice_per_class" [K-1] (absent classes included)}).
    """
    k = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    w = jnp.asarray(class_weights, jnp.float32)[labels]  # [B, H, W]
    ce = jnp.sum(w * -jnp.sum(onehot * logp, -1)) / jnp.sum(w)
    probs = jnp.exp(logp)
    inter = jnp.sum(probs * onehot, axis=(0, 1, 2))[1:]
    denom = jnp.sum(probs, axis=(0, 1, 2))[1:] + jnp.sum(onehot, axis=(0, 1, 2))[1:]
    dice = (2.0 * inter + smooth) / (denom + smooth)
    present = jnp.sum(onehot, axis=(0, 1, 2))[1:] > 0
    dice_loss = jnp.sum(jnp.where(present, 1.0 - dice, 0.0)) / jnp.maximum(jnp.sum(present), 1)
    loss = ce_weight * ce + dice_weight * dice_loss
    return loss, {"ce": ce, "dice_loss": dice_loss, "dice_per_class": dice}


def segment_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The learning rate (per step) of ``optim``: ``optim.lr`` (Table 4: 1e-4), constant,
    after ``optim.warmup_steps`` of linear warmup, or warmup + cosine to 0 at
    ``total_steps`` (``optim.schedule == "cosine"``).

    Equal configs return the same object, so jitted programs built on it are reused.
    """
    return _schedule(json.dumps(optim.to_dict(), sort_keys=True), int(total_steps))


@functools.lru_cache(maxsize=16)
def _schedule(optim_json: str, total_steps: int) -> optax.Schedule:
    optim = json.loads(optim_json)
    lr = float(optim["lr"])
    warmup = int(optim["warmup_steps"])
    if optim["schedule"] == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, max(warmup, 1), max(total_steps, warmup + 1)
        )
    if warmup:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    return optax.constant_schedule(lr)


def segment_optimizer(
    optim: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
    """AdamW on :func:`segment_schedule`, after global-norm clipping at ``optim.grad_clip``
    (0: none).

    Equal configs return the same object, so jitted programs built on it are reused.
    """
    return _optimizer(json.dumps(optim.to_dict(), sort_keys=True), int(total_steps))


@functools.lru_cache(maxsize=16)
def _optimizer(optim_json: str, total_steps: int) -> optax.GradientTransformation:
    optim = json.loads(optim_json)
    tx = optax.adamw(_schedule(optim_json, total_steps), weight_decay=float(optim["weight_decay"]))
    clip = float(optim["grad_clip"])
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx


def init_key(seed: int) -> jax.Array:
    """The parameter-init key: JAX's ``rbg`` generator, deterministic on a fixed mesh.

    XLA compiles a Linen init drawn with ``rbg`` several times faster than with threefry
    (on CPU ~2 s instead of ~16 s for a small U-Net), which matters for tests and smoke runs.
    """
    return jax.random.key(int(seed), impl="rbg")


def create_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    image_shape: Sequence[int],
    mesh: jax.sharding.Mesh,
    encoder_params: Any = None,
) -> tuple[SegState, Any, Any]:
    """Initialises the state inside jit, placed by the mesh rule (never whole on one device).

    Args:
      model: a segmentation model from the registry.
      tx: the optimiser.
      key: PRNG key of the parameter init (see :func:`init_key`).
      image_shape: (H, W) used to trace the init.
      mesh: the (data, fsdp) mesh.
      encoder_params: for ``vit_unet``, the exported encoder params that replace the
        initial ``params["encoder"]`` (see ``models.vit_seg.with_encoder_params``).

    Returns:
      (state, abstract state with shardings, state shardings).
    """
    init, abstract, shardings = _init_program(model, tx, tuple(image_shape), mesh)
    return init(key, encoder_params), abstract, shardings


@functools.lru_cache(maxsize=16)
def _init_program(model: nn.Module, tx: Any, image_shape: tuple[int, ...], mesh: Any):
    """(jitted init, abstract state with shardings, shardings); cached per model/tx/mesh."""
    from dinolg_jax.models.vit_seg import with_encoder_params

    dummy = jnp.zeros((1, *image_shape, 1), jnp.float32)

    def init(k, enc):
        params = model.init(k, dummy)["params"]
        if enc is not None:
            params = with_encoder_params(params, enc)
        return SegState(jnp.zeros((), jnp.int32), params, tx.init(params))

    abstract = jax.eval_shape(init, init_key(0), None)
    shardings = mesh_lib.state_shardings(mesh, abstract)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return jax.jit(init, out_shardings=shardings), abstract, shardings


def make_train_step(
    model: nn.Module,
    loss_config: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule | None = None,
) -> Callable[[SegState, dict[str, jax.Array]], tuple[SegState, dict[str, jax.Array]]]:
    """The pure step: ``(state, {"image", "labels"}) -> (state, metrics)``.

    ``image`` [B, H, W, 1] float32 and ``labels`` [B, H, W] uint8/int; metrics ``loss``,
    ``ce``, ``dice_loss``, ``grad_norm`` (scalars) and, given ``schedule``, ``lr`` (the
    rate this step applied). Jitted by ``runtime.run.jit_step``.
    """
    class_weights = jnp.asarray(tuple(loss_config.class_weights), jnp.float32)

    def step(state: SegState, batch: dict[str, jax.Array]):
        def loss_fn(params):
            logits = model.apply({"params": params}, batch["image"], train=True)
            return segmentation_loss(
                logits,
                batch["labels"].astype(jnp.int32),
                class_weights,
                ce_weight=float(loss_config.ce_weight),
                dice_weight=float(loss_config.dice_weight),
                smooth=float(loss_config.smooth),
            )

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "ce": aux["ce"],
            "dice_loss": aux["dice_loss"],
            "grad_norm": optax.tree.norm(grads),
        }
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return SegState(state.step + 1, params, opt_state), metrics

    return step


@functools.lru_cache(maxsize=16)
def _step_program(
    model: nn.Module, tx: Any, image_shape: tuple[int, ...], mesh: Any, loss: str, schedule: Any
):
    """The jitted, state-donating step; cached per model, optimiser, shape, mesh, loss and
    learning-rate schedule (logged as ``lr``)."""
    shardings = _init_program(model, tx, image_shape, mesh)[2]
    step = make_train_step(model, ml_collections.ConfigDict(json.loads(loss)), tx, schedule)
    batch = mesh_lib.batch_sharding(mesh)
    return run_lib.jit_step(step, mesh, shardings, {"image": batch, "labels": batch})


def build_model(config: ml_collections.ConfigDict) -> tuple[nn.Module, Any]:
    """The configured segmenter and, for ``vit_unet``, the encoder params it starts from.

    ``config.model.name`` picks the registry entry, ``config.model.kwargs`` its fields;
    ``vit_unet`` reads ``config.encoder`` (a pretraining workdir or its ``encoder/``) and
    takes the ViT variant from the export.
    """
    name = str(config.model.name)
    kwargs = dict(config.model.kwargs)
    kwargs.setdefault("dtype", jnp.dtype(config.model.dtype))
    encoder_params = None
    if name == "vit_unet":
        if not config.encoder:
            raise ValueError("vit_unet needs config.encoder: a pretraining workdir or encoder dir")
        encoder_params, enc_cfg = ckpt_lib.load_encoder(config.encoder)
        kwargs["variant"] = enc_cfg["variant"]
        # An export's model_config.json, not a config: a pretraining export holds no
        # ref_image_size (its ViT kept the default 224); an imported one does.
        kwargs.setdefault("ref_image_size", int(enc_cfg.get("ref_image_size", 224)))
    return build_segmenter(name, **kwargs), encoder_params


def train_segmenter(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> dict[str, Any]:
    """Trains (or resumes) a segmentation model, then evaluates it on ``config.splits.test``.

    Args:
      config: a ``configs/segment.py`` config (any model and size).
      workdir: output folder; a re-run with the same folder resumes from its checkpoint.

    Returns:
      The summary, also written to ``workdir/summary.json``: ``step``, ``total_steps``,
      ``steps_per_epoch``, ``model``, ``status`` ("done", or "preempted" after a SIGTERM:
      the current step finishes, a checkpoint is written, no evaluation), ``metrics``
      (last logged), ``first_loss``, ``eval`` (see :func:`evaluate`; None when
      preempted), ``params_checksum``, ``wall_s``, and the grid it learnt at
      (``data.split_grid``: ``pixel_spacing_mm`` median / min / max over the train
      split's studies at the size it saw them, ``slice_size``), which inference resamples
      studies to. A re-run of a finished run returns its
      summary at once; a re-run of a preempted one resumes.

    Raises:
      runtime.metrics_log.NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is
        kept).
      ValueError: a batch that does not split over the devices.
      ManifestError: the train or evaluation split has no records (before training).
    """
    run = run_lib.TrainingRun(workdir, config)
    manifest = run_manifest.prepare_manifest(config, run.workdir)
    for split in (config.splits.train, config.splits.test):  # an empty split fails now,
        manifest_lib.load(manifest).shard_paths(split)  # not after training
    mesh = mesh_lib.mesh_from_config(config.mesh)
    data = config.data
    if data.batch_size % mesh.devices.size:
        raise ValueError(f"batch {data.batch_size} does not split over {mesh.devices.size} devices")
    n_train = len(
        pipeline.labelled_indices(manifest, config.splits.train, data.positive_fraction, data.seed)
    )
    steps_per_epoch = max(1, n_train // data.batch_size)
    total_steps = int(config.optim.num_steps) or int(config.optim.epochs) * steps_per_epoch
    finished = run.finished(total_steps)
    if finished is not None:  # a re-run of a finished run: nothing to do
        return finished
    # the spacing and slice size it learns at, recorded for inference to resample to
    grid = split_grid.split_grid(manifest, config.splits.train, input_size=int(data.eval_size))

    model, encoder_params = build_model(config)
    tx = segment_optimizer(config.optim, total_steps)
    first = next(iter(pipeline.eval_dataset(manifest, config.splits.train, data)))
    image_shape = tuple(first["image"].shape[1:3])
    state, abstract, _ = create_state(
        model, tx, init_key(config.seed), image_shape, mesh, encoder_params
    )
    train_data = pipeline.labelled_dataset(
        manifest, config.splits.train, data, augment=bool(data.augment)
    )
    state, iterator = run.restore_or_init(abstract, lambda: state, iter(train_data))
    loss_json = json.dumps(config.loss.to_dict(), sort_keys=True)
    jitted = _step_program(
        model, tx, image_shape, mesh, loss_json, segment_schedule(config.optim, total_steps)
    )

    def step_fn(state: SegState, batch: dict[str, Any]):
        return jitted(state, mesh_lib.put_batch({k: batch[k] for k in ("image", "labels")}, mesh))

    result = run.train(
        state, iterator, step_fn, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )
    state = result.state
    evaluation = None
    if result.status == "done":
        eval_data = config.data.copy_and_resolve_references()
        eval_data.batch_size = int(config.eval.batch_size)
        evaluation = evaluate(model, state.params, manifest, config.splits.test, eval_data, mesh)
    return run.write_summary(
        {
            "step": result.step,
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "model": str(config.model.name),
            "input_shape": [int(v) for v in image_shape],  # the slice size it learnt at
            "status": result.status,
            "metrics": result.log.last,
            "first_loss": result.log.first_loss,
            "eval_split": str(config.splits.test),
            "eval": evaluation,
            "params_checksum": ckpt_lib.params_checksum(state.params),
            **grid.summary_fields(),
        }
    )
