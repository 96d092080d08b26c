"""The DINO train state, its sharded creation, the pure training step and its Trainer.

State (a pytree; every leaf is a ``jax.Array`` placed by :mod:`dinolg_jax.runtime.mesh`'s
shape rule)::

    step       int32 []       optimiser steps taken so far
    params     student {"backbone": ViT params, "head": DINOHead params}, float32
    teacher    same tree: exponential moving average of the student
    opt_state  optax state of the student's optimiser
    center     float32 [K]    DINO's running mean of the teacher's outputs

The step (:func:`make_train_step`) takes a crops-major batch ``{"global": [n_global, B,
G, G, 1], "local": [n_local, B, L, L, 1]}`` float32, sends every crop of one resolution
through the backbone in one call (batch-major merge ``[B * n, H, W, 1]`` so the batch
sharding survives the reshape), applies the head to all crops at once, and computes the
DINO loss of the student (all crops, drop path on) against the teacher (global crops,
no drop path). Randomness: ``fold_in(key, step)``, so a resumed run draws exactly what
an uninterrupted run draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from dinolg_jax.data import crop_codec
from dinolg_jax.dino.loss import dino_loss, koleo_loss, teacher_collapse_stats, update_center
from dinolg_jax.dino.optim import build_optimizer
from dinolg_jax.dino.schedules import DinoSchedules
from dinolg_jax.models.heads import DINOHead
from dinolg_jax.models.vit import ViT
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime.run import jit_step

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Student, teacher, optimiser state and DINO center (see module docstring)."""

    step: jax.Array
    params: Any
    teacher: Any
    opt_state: Any
    center: jax.Array


def _init_train_state(
    key: jax.Array,
    backbone: nn.Module,
    head: nn.Module,
    tx: optax.GradientTransformation,
    *,
    crop_size: int,
    in_channels: int = 1,
) -> TrainState:
    """Initialises a state (pure; meant to run inside ``jit``).

    The teacher starts as an exact copy of the student (as in DINO).

    Args:
      key: PRNG key for the parameter init.
      backbone: the ViT (Linen module).
      head: the DINO head.
      tx: the student's optimiser.
      crop_size: side of the dummy image used to trace the init, pixels.
      in_channels: image channels.
    """
    k_backbone, k_head = jax.random.split(key)
    dummy = jnp.zeros((1, crop_size, crop_size, in_channels), jnp.float32)
    backbone_params = backbone.init({"params": k_backbone}, dummy, train=False)["params"]
    feats = jax.eval_shape(
        lambda p: backbone.apply({"params": p}, dummy, train=False)[0], backbone_params
    )
    feats = jnp.zeros(feats.shape, jnp.float32)  # only its shape matters
    head_params = head.init({"params": k_head}, feats)["params"]
    out_dim = jax.eval_shape(lambda p: head.apply({"params": p}, feats), head_params).shape[-1]
    params = {"backbone": backbone_params, "head": head_params}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        teacher=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
        center=jnp.zeros((out_dim,), jnp.float32),
    )


def _abstract_train_state(
    mesh: Mesh, init_fn: Callable[[jax.Array], TrainState], fsdp_min_size: int = 2**18
) -> tuple[TrainState, TrainState]:
    """Shapes and shardings of the state, without allocating it.

    Args:
      mesh: the (data, fsdp) mesh.
      init_fn: ``key -> TrainState`` (e.g. :func:`_init_train_state` partially applied).
      fsdp_min_size: arrays smaller than this stay replicated under FSDP.

    Returns:
      ``(abstract, shardings)``: a state of ``jax.ShapeDtypeStruct`` with ``sharding``
      set, and the matching pytree of ``NamedSharding``.
    """
    shapes = jax.eval_shape(init_fn, jax.random.key_data(jax.random.key(0)))
    shardings = mesh_lib.state_shardings(mesh, shapes, fsdp_min_size)
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return abstract, shardings


def _crops_through_backbone(
    backbone: nn.Module, params: Any, crops: jax.Array, *, train: bool, rng: jax.Array | None
) -> jax.Array:
    """Runs all crops of one resolution through the backbone in one call.

    Args:
      crops: [n, B, H, W, C] crops-major.

    Returns:
      [B, n, D] CLS features (batch-major, so the batch sharding is kept).
    """
    n, b = crops.shape[:2]
    x = jnp.swapaxes(crops, 0, 1).reshape((b * n, *crops.shape[2:]))  # [B*n, H, W, C]
    rngs = {"dropout": rng} if train else None
    cls, _ = backbone.apply({"params": params}, x, train=train, rngs=rngs)
    return cls.reshape(b, n, cls.shape[-1])


def _dino_outputs(
    backbone: nn.Module,
    head: nn.Module,
    params: Any,
    views: list[jax.Array],
    *,
    train: bool,
    rng: jax.Array | None,
) -> jax.Array:
    """Backbone per resolution, then the head on every crop at once.

    Args:
      views: list of crops-major arrays [n_i, B, H_i, W_i, C], global crops first.

    Returns:
      ``([sum n_i, B, K] head outputs, crops-major in the order of ``views``, [B, sum n_i,
      D] backbone CLS features)``.
    """
    feats = []
    for i, crops in enumerate(views):
        r = None if rng is None else jax.random.fold_in(rng, i)
        feats.append(
            _crops_through_backbone(backbone, params["backbone"], crops, train=train, rng=r)
        )
    f = jnp.concatenate(feats, axis=1)  # [B, n, D]
    b, n, d = f.shape
    out = head.apply({"params": params["head"]}, f.reshape(b * n, d))
    return jnp.swapaxes(out.reshape(b, n, out.shape[-1]), 0, 1).astype(jnp.float32), f


def make_train_step(
    backbone: nn.Module,
    head: nn.Module,
    tx: optax.GradientTransformation,
    schedules: Any,
    *,
    student_temp: float,
    center_momentum: float,
    centering: str = "ema",
    sinkhorn_iters: int = 3,
    koleo_weight: float = 0.0,
) -> Callable[[TrainState, Batch, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """Builds the pure DINO step ``(state, batch, key, nan_at_step) -> (state, metrics)``.

    ``key`` is the run's step key (raw uint32 [2]); the step draws from
    ``fold_in(key, state.step)``. ``nan_at_step`` (int32 scalar, -1 = never) is a debug
    hook: at that step the loss, and so the update, is made NaN. It is a runtime
    argument, so the guard can be tested with the same compiled program.

    Args:
      backbone: the ViT (student and teacher share the module, not the params).
      head: the DINO head.
      tx: the student's optimiser (its own schedules run on its step count).
      schedules: a ``dino.schedules.DinoSchedules`` (per-step callables ``lr``,
        ``weight_decay``, ``teacher_momentum``, ``teacher_temp``).
      student_temp: student softmax temperature.
      center_momentum: EMA rate of the center.
      centering: teacher centring, ``"ema"`` (DINO) or ``"sinkhorn"`` (DINOv2).
      sinkhorn_iters: Sinkhorn-Knopp alternations (``"sinkhorn"`` only).
      koleo_weight: weight of DINOv2's KoLeo term on the student's backbone CLS of each
        global crop (0: off, as DINO v1); the metric ``koleo`` is logged either way.

    Returns:
      The step. ``metrics`` (float32 scalars): loss, lr, wd, momentum, teacher_temp,
      grad_norm (before clipping), param_norm and update_norm of the student, and the
      collapse monitors (``dino.loss.teacher_collapse_stats``: teacher_entropy,
      teacher_batch_entropy, teacher_kl) with the loss split as cross-entropy = entropy
      + KL: ``loss_entropy`` (= teacher_entropy, the teacher's part) and ``loss_kl``
      (= loss - teacher_entropy, the mean KL(teacher || student) over the loss's pairs).
      All are computed inside the step; none needs a host round trip.
    """

    def step_fn(
        state: TrainState, batch: Batch, key: jax.Array, nan_at_step: jax.Array
    ) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(key, state.step)
        # Crops may arrive as uint16 fixed point (config.data.batch_dtype): decoded here.
        batch = {**batch, **crop_codec.decode_crops(batch)}
        global_crops = batch["global"]
        views = [global_crops]
        if "local" in batch and batch["local"].shape[0] > 0:
            views.append(batch["local"])
        teacher_temp = jnp.asarray(schedules.teacher_temp(state.step), jnp.float32)
        momentum = jnp.asarray(schedules.teacher_momentum(state.step), jnp.float32)

        teacher_out, _ = _dino_outputs(
            backbone, head, state.teacher, [global_crops], train=False, rng=None
        )
        teacher_out = jax.lax.stop_gradient(teacher_out)
        n_global = global_crops.shape[0]

        def loss_fn(params: Any) -> tuple[jax.Array, jax.Array]:
            student_out, feats = _dino_outputs(backbone, head, params, views, train=True, rng=rng)
            koleo = jnp.mean(
                jnp.stack([koleo_loss(feats[:, i]) for i in range(n_global)])
            )  # [B, D] per global crop
            loss = dino_loss(
                student_out,
                teacher_out,
                state.center,
                student_temp=student_temp,
                teacher_temp=teacher_temp,
                centering=centering,
                sinkhorn_iters=sinkhorn_iters,
            )
            if koleo_weight:
                loss = loss + koleo_weight * koleo
            return loss * jnp.where(state.step == nan_at_step, jnp.nan, 1.0), koleo

        (loss, koleo), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        teacher = jax.tree.map(
            lambda t, s: momentum * t + (1.0 - momentum) * s, state.teacher, params
        )
        collapse = teacher_collapse_stats(
            teacher_out,
            state.center,
            teacher_temp=teacher_temp,
            centering=centering,
            sinkhorn_iters=sinkhorn_iters,
        )
        center = update_center(state.center, teacher_out, center_momentum)
        metrics = {
            **collapse,
            "loss_entropy": collapse["teacher_entropy"],
            "loss_kl": loss - koleo_weight * koleo - collapse["teacher_entropy"],
            "koleo": koleo,
            "loss": loss,
            "lr": jnp.asarray(schedules.lr(state.step), jnp.float32),
            "wd": jnp.asarray(schedules.weight_decay(state.step), jnp.float32),
            "momentum": momentum,
            "teacher_temp": teacher_temp,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "update_norm": optax.tree.norm(updates),
        }
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            teacher=teacher,
            opt_state=opt_state,
            center=center,
        )
        return new_state, metrics

    return step_fn


def _jit_train_step(
    step_fn: Callable[..., tuple[TrainState, Metrics]],
    mesh: Mesh,
    state_shardings: TrainState,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Jits the step (``runtime.run.jit_step``): the state donated, crops-major batch
    arrays split over every device on dimension 1, the key and ``nan_at_step``
    replicated."""
    crops = mesh_lib.batch_sharding(mesh, batch_dim=1)
    return jit_step(step_fn, mesh, state_shardings, {"global": crops, "local": crops}, 2)


def _build_models(config: ml_collections.ConfigDict) -> tuple[ViT, DINOHead]:
    """The backbone (student and teacher) and the DINO head from ``config.model/dino``."""
    m, d = config.model, config.dino
    dtype = jnp.dtype(m.dtype)
    backbone = ViT(
        variant=m.variant,
        dtype=dtype,
        drop_path_rate=float(m.drop_path_rate),
        attention_impl=m.attention_impl or None,
        pad_tokens_to=int(m.pad_tokens_to),
        remat=bool(m.remat),
        remat_policy=m.remat_policy or None,
    )
    head = DINOHead(
        out_dim=int(d.out_dim),
        hidden_dim=int(d.hidden_dim),
        bottleneck_dim=int(d.bottleneck_dim),
        norm_last_layer=bool(d.norm_last_layer),
        dtype=dtype,
    )
    return backbone, head


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Everything a training loop needs, built once from the config."""

    mesh: Mesh  # the (data, fsdp) mesh
    backbone: ViT  # student and teacher backbone module
    head: DINOHead  # DINO head module
    schedules: DinoSchedules  # per-step lr, wd, momentum, teacher temperature
    tx: optax.GradientTransformation  # the student's optimiser
    abstract_state: TrainState  # ShapeDtypeStructs with shardings (for restore)
    shardings: TrainState  # NamedShardings of the state
    step: Callable[..., tuple[TrainState, Metrics]]  # jitted, donating step
    init_fn: Callable[[jax.Array], TrainState]  # key -> state (pure)
    init_key: jax.Array  # raw key of the parameter init
    step_key: jax.Array  # raw key folded with the step number inside the step

    def init_state(self) -> TrainState:
        """A fresh state, created directly in its sharded layout (jit with out_shardings)."""
        rep = mesh_lib.replicated(self.mesh)
        init = jax.jit(self.init_fn, in_shardings=rep, out_shardings=self.shardings)
        return init(self.init_key)


def make_trainer(config: ml_collections.ConfigDict, mesh: Mesh, steps_per_epoch: int) -> Trainer:
    """Builds models, schedules, optimiser, state shardings and the jitted step.

    Keys: one seed (``config.seed``) split once into the init key and the step key.
    """
    backbone, head = _build_models(config)
    schedules = DinoSchedules.from_config(config, int(steps_per_epoch))
    tx = build_optimizer(config, schedules)

    def init_fn(key: jax.Array) -> TrainState:
        return _init_train_state(key, backbone, head, tx, crop_size=int(config.data.global_size))

    min_size = int(config.mesh.fsdp_min_size)
    abstract, shardings = _abstract_train_state(mesh, init_fn, min_size)
    step = _jit_train_step(
        make_train_step(
            backbone,
            head,
            tx,
            schedules,
            student_temp=float(config.dino.student_temp),
            center_momentum=float(config.dino.center_momentum),
            centering=str(config.dino.centering),
            sinkhorn_iters=int(config.dino.sinkhorn_iters),
            koleo_weight=float(config.dino.koleo_weight),
        ),
        mesh,
        shardings,
    )
    init_key, step_key = jax.random.split(jax.random.PRNGKey(int(config.seed)))
    return Trainer(
        mesh=mesh,
        backbone=backbone,
        head=head,
        schedules=schedules,
        tx=tx,
        abstract_state=abstract,
        shardings=shardings,
        step=step,
        init_fn=init_fn,
        init_key=init_key,
        step_key=jax.device_put(step_key, mesh_lib.replicated(mesh)),
    )
