"""DINO / DINO-LG pretraining: the run around the step (data, resume, logging, guards).

``pretrain(config, workdir)`` is the whole run; ``tools/pretrain.py`` only parses flags.
What it writes under ``workdir`` (process 0 for the text files)::

    config.json          the resolved config
    metrics.jsonl        one JSON line per logged step (``runtime.metrics_log.MetricsLog``): step,
                         epoch, loss, loss_window_mean (mean since the last line), lr,
                         wd, momentum (teacher EMA), teacher_temp, grad_norm (before
                         clipping), param_norm, update_norm, steps_per_s, eta_s; the
                         collapse monitors teacher_entropy, teacher_batch_entropy,
                         teacher_kl, loss_entropy, loss_kl
                         (``dino.step.make_train_step``); on evaluation steps
                         the online eval online_{knn,probe}_roc_auc beside the random
                         init's init_{knn,probe}_roc_auc and their *_gain
    online_eval_init.json  the random-initialised encoder's online eval (step 0)
    tensorboard/         the same scalars as TensorBoard events (``config.tensorboard``)
    checkpoints/<step>/  Orbax: train state + Grain iterator state + config (last k kept)
    encoder/             the teacher backbone (``runtime.checkpoint.save_encoder``)
    summary.json         final step, last metrics, params_checksum, status, health
                         (the collapse and left-the-init verdicts, ``eval.health``)
    phantom/             only when ``config.data.manifest`` is empty: a small phantom
                         release and its conversion, made on the first run

Resume, checkpoints, SIGTERM and the non-finite stop are ``runtime.run.TrainingRun``'s:
re-running with the same workdir resumes from the latest checkpoint, the train state and
the data iterator continue exactly (``fold_in(key, step)`` inside the step), so a resumed
run ends with the same bytes as an uninterrupted one; a non-finite loss stops the run at
that step, before anything from that state is saved.

Health: every ``eval_every`` steps (and at step 0 and the last step) the teacher backbone
is scored by ``eval.online_eval`` on a cached subset of the val split, beside the same
scores of the random-initialised encoder; a warning line is logged (and kept in
``summary.json["health"]``) when the teacher has collapsed or the encoder has not left
its initialisation (``eval.health``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dinolg_jax.data import run_manifest
from dinolg_jax.dino import step as step_lib
from dinolg_jax.eval import health as health_lib
from dinolg_jax.eval import online_eval as online_eval_lib
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime.json_file import write_json
from dinolg_jax.runtime.run import PeriodicEval, TrainingRun


def _online_evaluator(
    config: ml_collections.ConfigDict,
    trainer: step_lib.Trainer,
    manifest: Any,
    data_config: ml_collections.ConfigDict,
    workdir: Path,
    state: step_lib.TrainState,
) -> tuple[online_eval_lib.OnlineEvaluator | None, dict[str, float]]:
    """The run's evaluator and its random init's scores (computed once, then read back)."""
    if int(config.eval_every) <= 0:
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
    """The run's verdicts (``eval.health``) from the last metrics and online eval."""
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
    config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> tuple[TrainingRun, Path, Any, step_lib.Trainer, int]:
    """The run (workdir, config.json), data (phantom when none) and trainer of a run.

    Returns:
      ``(run, manifest path, mesh, trainer, steps_per_epoch)``; an epoch is the
      pretraining split's records over the global batch.
    """
    from dinolg_jax.data import manifest as manifest_lib

    run = TrainingRun(workdir, config)
    manifest = run_manifest.prepare_manifest(config, run.workdir)
    mesh = mesh_lib.mesh_from_config(config.mesh)
    n_records = manifest_lib.load(manifest).num_records("pretrain")
    steps_per_epoch = max(1, n_records // int(config.data.batch_size))
    trainer = step_lib.make_trainer(config, mesh, steps_per_epoch)
    return run, manifest, mesh, trainer, steps_per_epoch


def _evaluation(
    config: ml_collections.ConfigDict,
    evaluator: online_eval_lib.OnlineEvaluator | None,
    init_eval: dict[str, float],
) -> PeriodicEval | None:
    """The online eval inside the loop, its health warnings after each of its lines."""
    if evaluator is None:
        return None

    def warn(step: int, last: dict[str, float]) -> None:
        for line in _health(config, last, init_eval)["warnings"]:
            logging.warning("step %d: %s", step, line)

    return PeriodicEval(
        every=int(config.eval_every),
        fn=lambda state: _online_line(evaluator, state.teacher["backbone"], init_eval),
        after=warn,
    )


def pretrain(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs (or resumes) DINO pretraining; see the module docstring.

    Args:
      config: a pretraining config (``configs/dinolg.py``).
      workdir: output folder; an existing one is resumed.

    Returns:
      The summary (also written to ``workdir/summary.json``): ``step``, ``total_steps``,
      ``status`` ("done" or "preempted"), ``metrics`` (last logged), ``params_checksum``
      (:func:`runtime.checkpoint.params_checksum` of ``{"params": student, "teacher":
      teacher}``), ``wall_s``.

    Raises:
      runtime.metrics_log.NonFiniteLossError: the loss became NaN/inf (the last good
        checkpoint is kept).
    """
    from dinolg_jax.data import manifest as manifest_lib
    from dinolg_jax.data import pipeline

    run, manifest, mesh, trainer, steps_per_epoch = _setup(config, workdir)
    workdir = run.workdir
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.manifest = str(manifest)
    total_steps = trainer.schedules.total_steps
    if int(config.num_steps) > 0:
        total_steps = min(total_steps, int(config.num_steps))
    finished = run.finished(total_steps)
    if finished is not None:  # a re-run of a finished run: nothing to do
        return finished
    data_iter = iter(pipeline.pretrain_dataset(manifest, data_config))
    state, data_iter = run.restore_or_init(trainer.abstract_state, trainer.init_state, data_iter)
    nan_at_step = jax.device_put(
        jnp.asarray(int(config.debug.nan_at_step), jnp.int32), mesh_lib.replicated(mesh)
    )
    evaluator, init_eval = None, {}
    if int(state.step) < total_steps:
        evaluator, init_eval = _online_evaluator(
            config, trainer, manifest_lib.load(manifest), data_config, workdir, state
        )

    def step_fn(state: step_lib.TrainState, batch: dict[str, np.ndarray]):
        crops = pipeline.device_put_batch(_crops_only(batch), mesh, data_axis=mesh_lib.BATCH_AXES)
        return trainer.step(state, crops, trainer.step_key, nan_at_step)

    result = run.train(
        state,
        data_iter,
        step_fn,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        evaluation=_evaluation(config, evaluator, init_eval),
        step_sleep_s=float(config.debug.step_sleep_s),
    )
    state, step = result.state, result.step
    if result.status == "done":
        ckpt_lib.save_encoder(
            workdir / ckpt_lib.ENCODER_DIR,
            state.teacher["backbone"],
            config.model.to_dict(),
            step=step,
        )
    metrics = result.log.last
    previous = run.previous_summary()
    if not metrics:  # re-run of a finished run
        metrics = previous.get("metrics", {})
    if not init_eval and (workdir / "online_eval_init.json").is_file():
        init_eval = json.loads((workdir / "online_eval_init.json").read_text())
    health = _health(config, metrics, init_eval)
    if not result.log.last and previous.get("health"):
        health = previous["health"]
    for line in health["warnings"]:
        logging.warning("%s", line)
    return run.write_summary(
        {
            "step": step,
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "status": result.status,
            "metrics": metrics,
            "params_checksum": ckpt_lib.params_checksum(
                {"params": state.params, "teacher": state.teacher}
            ),
            "health": health,
        }
    )


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
    run, _, _, trainer, _ = _setup(config, workdir)
    workdir = run.workdir
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
    run.close()
    return summary
