"""DINO / DINO-LG pretraining: the run around the step (data, resume, logging, guards).

``pretrain(config, workdir)`` is the whole run; ``tools/pretrain.py`` only parses flags.
What it writes under ``workdir`` (process 0 for the text files)::

    config.json          the resolved config
    metrics.jsonl        one JSON line per logged step (``runtime.loop.MetricsLog``): step,
                         epoch, loss, loss_window_mean (mean since the last line), lr,
                         wd, momentum (teacher EMA), teacher_temp, grad_norm (before
                         clipping), param_norm, update_norm, steps_per_s, eta_s; the
                         collapse monitors teacher_entropy, teacher_batch_entropy,
                         teacher_kl, loss_entropy, loss_kl
                         (``train.state.make_train_step``); on evaluation steps
                         the online eval online_{knn,probe}_roc_auc beside the random
                         init's init_{knn,probe}_roc_auc and their *_gain
    online_eval_init.json  the random-initialised encoder's online eval (step 0)
    tensorboard/         the same scalars as TensorBoard events (``config.tensorboard``)
    checkpoints/<step>/  Orbax: train state + Grain iterator state + config (last k kept)
    encoder/             the teacher backbone (``runtime.checkpoint.save_encoder``)
    summary.json         final step, last metrics, params_checksum, status, health
                         (the collapse and left-the-init verdicts, ``train.health``)
    phantom/             only when ``config.data.manifest`` is empty: a small phantom
                         release and its conversion, made on the first run

Re-running with the same workdir resumes from the latest checkpoint: the train state
and the data iterator continue exactly (``fold_in(key, step)`` inside the step), so a
resumed run ends with the same bytes as an uninterrupted one. SIGTERM: the current step
finishes, a checkpoint is written, the run returns with status ``"preempted"``. A
non-finite loss raises ``runtime.loop.NonFiniteLossError`` before anything from that state
is saved; the last good checkpoint stays as it was. The check runs on every step, one step
behind the dispatch (step k's loss is read once step k + 1 is queued, so the device never
waits for the host): the run stops at the first non-finite step, not at the next log line.

Health: every ``eval_every`` steps (and at step 0 and the last step) the teacher backbone
is scored by ``train.online_eval`` on a cached subset of the val split, beside the same
scores of the random-initialised encoder; a warning line is logged (and kept in
``summary.json["health"]``) when the teacher has collapsed or the encoder has not left
its initialisation (``train.health``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dinolg_jax.phantom import training_data
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime.loop import MetricsLog, Preemption, write_json
from dinolg_jax.train import health as health_lib
from dinolg_jax.train import online_eval as online_eval_lib
from dinolg_jax.train import state as state_lib


def base_config() -> ml_collections.ConfigDict:
    """The DINO recipe shared by every pretraining config (official ``main_dino.py`` values).

    Experiment files (``configs/dino_*.py``, ``configs/smoke.py``) start from this and set
    the model, the crops, the batch and the length. Groups: ``model`` (the ViT),
    ``dino`` (head, temperatures, momenta), ``optim``, ``data`` (the Grain pipeline's
    ``default_data_config()``; ``data.batch_size`` is the global batch, ``data.seed`` a
    reference to the one ``seed``), ``mesh``, ``checkpoint``, ``phantom`` (used only
    when ``data.manifest`` is empty), ``debug``.
    """
    from dinolg_jax.data.pipeline import default_data_config

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_epochs = 100.0  # schedule length in epochs (may be fractional)
    c.num_steps = 0  # > 0: stop after this many steps (schedules keep num_epochs)
    c.log_every = 10  # steps between metrics lines
    c.eval_every = 1000  # steps between online evaluations (0: none); also step 0 and last
    c.online_eval = online_eval_lib.default_config()
    c.monitor = health_lib.default_config()
    c.tensorboard = False  # also write TensorBoard event files
    c.model = ml_collections.ConfigDict()
    c.model.variant = "S/8"
    c.model.dtype = "float32"  # compute dtype; params stay float32
    c.model.drop_path_rate = 0.1  # student only
    c.model.attention_impl = ""  # "" / "xla" (CPU) or "cudnn" (GPU, bf16)
    c.model.pad_tokens_to = 0  # cuDNN: pad tokens to a multiple of 64
    c.model.remat = False
    c.model.remat_policy = ""
    c.dino = ml_collections.ConfigDict()
    c.dino.out_dim = 65536
    c.dino.hidden_dim = 2048
    c.dino.bottleneck_dim = 256
    c.dino.norm_last_layer = True
    c.dino.student_temp = 0.1
    c.dino.warmup_teacher_temp = 0.04
    c.dino.teacher_temp = 0.07
    c.dino.warmup_teacher_temp_epochs = 30.0
    c.dino.momentum_teacher = 0.996
    c.dino.center_momentum = 0.9
    c.dino.centering = "ema"  # DINO's EMA centre; "sinkhorn": Sinkhorn-Knopp (DINOv2)
    c.dino.sinkhorn_iters = 3
    c.dino.koleo_weight = 0.0  # DINOv2's KoLeo on the student CLS of the global crops (0: off)
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 5e-4  # per 256 images
    c.optim.min_lr = 1e-6
    c.optim.warmup_epochs = 10.0
    c.optim.weight_decay = 0.04
    c.optim.weight_decay_end = 0.4
    c.optim.clip_grad = 3.0
    c.optim.clip_mode = "per_param"  # official DINO; "global": one norm over all gradients
    c.optim.freeze_last_layer = 1.0  # epochs
    c.data = default_data_config("dinolg")
    c.data.manifest = ""  # "" -> a phantom under the workdir
    c.data.batch_size = 256  # GLOBAL batch: images per step over all devices
    c.data.seed = c.get_ref("seed")  # one seed for the whole run
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.fsdp_min_size = 2**18
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True
    c.phantom = ml_collections.ConfigDict()
    c.phantom.n_gated = 6
    c.phantom.n_nongated = 2
    c.phantom.seed = 0
    c.phantom.size = 128
    c.debug = ml_collections.ConfigDict()
    c.debug.nan_at_step = -1  # make the loss NaN in the step from this step (tests the guard)
    c.debug.step_sleep_s = 0.0  # sleep after each step (widens test windows; no effect on results)
    return c


def paper_config(variant: str, n_local_guided: int, batch_size: int) -> ml_collections.ConfigDict:
    """The paper's Table 3 run on GPUs: 150 epochs, 2 x 224 px global + 16 x 96 px local crops.

    Args:
      variant: ViT variant, ``"B/8"`` (the paper) or ``"S/8"``.
      n_local_guided: label-guided local crops out of 16 (DINO 0, DINO-LG 4); the rest
        are random local crops.
      batch_size: global batch (images per step over all devices).

    Returns:
      ``base_config()`` with bf16 compute, cuDNN attention (tokens padded to a multiple
      of 64), the crops and the length set; ``configs/dino*_vit*.py`` are this.
    """
    if not 0 <= n_local_guided <= 16:
        raise ValueError(f"n_local_guided must be in [0, 16], got {n_local_guided}")
    c = base_config()
    c.model.variant = variant
    c.model.dtype = "bfloat16"
    c.model.attention_impl = "cudnn"
    c.model.pad_tokens_to = 64
    c.num_epochs = 150.0
    c.data.batch_size = batch_size
    c.data.n_global = 2
    c.data.global_size = 224
    c.data.local_size = 96
    c.data.n_local_random = 16 - n_local_guided
    c.data.n_local_guided = n_local_guided
    c.checkpoint.every_steps = 1000
    c.log_every = 50
    return c


def _online_evaluator(
    config: ml_collections.ConfigDict,
    trainer: state_lib.Trainer,
    manifest: Any,
    data_config: ml_collections.ConfigDict,
    workdir: Path,
    state: state_lib.TrainState,
) -> tuple[online_eval_lib.OnlineEvaluator | None, dict[str, float]]:
    """The run's evaluator and its random init's scores (computed once, then read back)."""
    if int(config.get("eval_every", 0)) <= 0:
        return None, {}
    try:
        evaluator = online_eval_lib.OnlineEvaluator(
            trainer.backbone, manifest, data_config, config.online_eval
        )
    except ValueError as e:
        logging.warning("online evaluation off: %s", e)
        return None, {}
    path = workdir / "online_eval_init.json"
    if path.is_file():
        return evaluator, json.loads(path.read_text())
    init_state = state if int(state.step) == 0 else trainer.init_state()
    init = evaluator.evaluate(init_state.teacher["backbone"])
    del init_state
    write_json(path, init)
    logging.info("online eval of the random init: %s", init)
    return evaluator, init


def _online_line(
    evaluator: online_eval_lib.OnlineEvaluator, params: Any, init: dict[str, float]
) -> dict[str, float]:
    """The online eval of ``params`` beside the init's, as metrics-line fields."""
    now = evaluator.evaluate(params)
    line = {}
    for key in ("knn", "probe"):
        line[f"online_{key}_roc_auc"] = now[f"{key}_roc_auc"]
        line[f"init_{key}_roc_auc"] = init[f"{key}_roc_auc"]
        line[f"{key}_gain"] = now[f"{key}_roc_auc"] - init[f"{key}_roc_auc"]
    return line


def _health(
    config: ml_collections.ConfigDict, last: dict[str, float], init: dict[str, float]
) -> dict[str, Any]:
    """The run's verdicts (``train.health``) from the last metrics and online eval."""
    collapse = left = None
    if "teacher_kl" in last:
        collapse = health_lib.collapse_verdict(last, int(config.dino.out_dim), config.monitor)
    if init and "online_knn_roc_auc" in last:
        online = {f"{k}_roc_auc": last[f"online_{k}_roc_auc"] for k in ("knn", "probe")}
        left = health_lib.init_verdict(online, init, config.monitor)
    return {
        "collapse": collapse,
        "init": left,
        "online_eval_init": init or None,
        "warnings": health_lib.warnings_for(collapse, left),
    }


def _crops_only(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"global": batch["global"], "local": batch["local"]}


def _setup(
    config: ml_collections.ConfigDict, workdir: Path
) -> tuple[Path, Any, state_lib.Trainer, int]:
    """Workdir, config.json, data (phantom when none) and the trainer of a run.

    Returns:
      ``(manifest path, mesh, trainer, steps_per_epoch)``; an epoch is the pretraining
      split's records over the global batch.
    """
    from dinolg_jax.data import manifest as manifest_lib

    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", config.to_dict())
    manifest = training_data.prepare_manifest(config, workdir)
    mesh = mesh_lib.mesh_from_config(config.mesh)
    n_records = manifest_lib.load(manifest).num_records("pretrain")
    steps_per_epoch = max(1, n_records // int(config.data.batch_size))
    return manifest, mesh, state_lib.make_trainer(config, mesh, steps_per_epoch), steps_per_epoch


def pretrain(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs (or resumes) DINO pretraining; see the module docstring.

    Args:
      config: a pretraining config (``configs/dino_*.py``, ``configs/smoke.py``).
      workdir: output folder; an existing one is resumed.

    Returns:
      The summary (also written to ``workdir/summary.json``): ``step``, ``total_steps``,
      ``status`` ("done" or "preempted"), ``metrics`` (last logged), ``params_checksum``
      (:func:`runtime.checkpoint.params_checksum` of ``{"params": student, "teacher":
      teacher}``), ``wall_s``.

    Raises:
      runtime.loop.NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is
        kept).
    """
    from dinolg_jax.data import manifest as manifest_lib
    from dinolg_jax.data import pipeline

    t_start = time.perf_counter()
    workdir = Path(workdir)
    config_dict = config.to_dict()
    manifest, mesh, trainer, steps_per_epoch = _setup(config, workdir)
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.manifest = str(manifest)
    total_steps = trainer.schedules.total_steps
    if int(config.num_steps) > 0:
        total_steps = min(total_steps, int(config.num_steps))
    finished = ckpt_lib.finished_summary(workdir, total_steps)
    if finished is not None:  # a re-run of a finished run: nothing to do
        logging.info("%s finished at step %d already", workdir, total_steps)
        return finished
    dataset = pipeline.pretrain_dataset(manifest, data_config)
    data_iter = iter(dataset)

    ckpt = ckpt_lib.Checkpointer(
        workdir / ckpt_lib.CHECKPOINT_DIR,
        max_to_keep=int(config.checkpoint.keep),
        async_save=bool(config.checkpoint.async_save),
    )
    state, data_state = ckpt_lib.restore_or_init(
        ckpt, trainer.abstract_state, trainer.init_state, workdir
    )
    if data_state is not None:
        data_iter.set_state(data_state)
    nan_at_step = jax.device_put(
        jnp.asarray(int(config.debug.nan_at_step), jnp.int32), mesh_lib.replicated(mesh)
    )

    log = MetricsLog(
        workdir, total_steps, steps_per_epoch=steps_per_epoch, tensorboard=config.tensorboard
    )
    step = int(state.step)
    evaluator, init_eval = None, {}
    if step < total_steps:
        evaluator, init_eval = _online_evaluator(
            config, trainer, manifest_lib.load(manifest), data_config, workdir, state
        )
    status = "done"
    log_every, ckpt_every = int(config.log_every), int(config.checkpoint.every_steps)
    eval_every = int(config.get("eval_every", 0))
    try:
        with Preemption() as preempt:
            while step < total_steps:
                batch = pipeline.device_put_batch(
                    _crops_only(next(data_iter)), mesh, data_axis=mesh_lib.BATCH_AXES
                )
                state, metrics = trainer.step(state, batch, trainer.step_key, nan_at_step)
                step += 1
                log.add(step, metrics)  # checks the previous step's loss
                if config.debug.step_sleep_s > 0:
                    time.sleep(float(config.debug.step_sleep_s))
                stop = preempt.should_stop(step)
                last = step == total_steps
                evaluate = evaluator is not None and (step % eval_every == 0 or last)
                if evaluate:
                    log.check_previous()
                    log.extra.update(_online_line(evaluator, state.teacher["backbone"], init_eval))
                if step % log_every == 0 or last or stop or evaluate:
                    log.flush(write=True)
                if evaluate:
                    for line in _health(config, log.last, init_eval)["warnings"]:
                        logging.warning("step %d: %s", step, line)
                if step % ckpt_every == 0 or last or stop:
                    log.flush(write=False)
                    ckpt.save(step, state, data_iter.get_state(), config_dict)
                if stop and not last:
                    status = "preempted"
                    logging.warning("SIGTERM: checkpoint written at step %d, exiting", step)
                    break
    finally:
        ckpt.close()
        log.close()

    if status == "done":
        ckpt_lib.save_encoder(
            workdir / ckpt_lib.ENCODER_DIR,
            state.teacher["backbone"],
            config.model.to_dict(),
            step=step,
        )
    metrics = log.last
    previous = {}
    if (workdir / "summary.json").is_file():
        previous = json.loads((workdir / "summary.json").read_text())
    if not metrics:  # re-run of a finished run
        metrics = previous.get("metrics", {})
    if not init_eval and (workdir / "online_eval_init.json").is_file():
        init_eval = json.loads((workdir / "online_eval_init.json").read_text())
    health = _health(config, metrics, init_eval)
    if not log.last and previous.get("health"):
        health = previous["health"]
    for line in health["warnings"]:
        logging.warning("%s", line)
    summary = {
        "step": step,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "status": status,
        "metrics": metrics,
        "params_checksum": ckpt_lib.params_checksum(
            {"params": state.params, "teacher": state.teacher}
        ),
        "health": health,
        "wall_s": time.perf_counter() - t_start,
    }
    write_json(workdir / "summary.json", summary)
    return summary


def initial_encoder(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> dict[str, Any]:
    """Exports the run's random-initialised teacher backbone (the ``random_init`` control).

    The same parameters ``pretrain(config, ...)`` starts from (same seed, model and
    init), written as ``workdir/encoder`` with a ``summary.json`` at step 0, so a probe
    or the attention ratio reads it exactly like a pretrained encoder.

    Returns:
      The summary: ``step`` 0, ``status`` "done", ``metrics`` {}, ``params_checksum``.
    """
    workdir = Path(workdir)
    _, _, trainer, _ = _setup(config, workdir)
    state = trainer.init_state()
    ckpt_lib.save_encoder(
        workdir / ckpt_lib.ENCODER_DIR, state.teacher["backbone"], config.model.to_dict()
    )
    summary = {
        "step": 0,
        "total_steps": 0,
        "status": "done",
        "metrics": {},
        "params_checksum": ckpt_lib.params_checksum(
            {"params": state.params, "teacher": state.teacher}
        ),
    }
    write_json(workdir / "summary.json", summary)
    return summary
