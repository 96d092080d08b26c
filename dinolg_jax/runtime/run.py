"""One training-run skeleton: everything around a trainer's step, written once.

The three trainers (``train/pretrain.py``, ``train/segment.py``, ``train/supervised.py``)
keep only what differs (their model, state, step and summary fields); a
:class:`TrainingRun` owns the rest::

    run = TrainingRun(workdir, config)          # mkdir, config.json, the wall clock
    done = run.finished(total_steps)            # a re-run of a finished run returns this
    state, data_iter = run.restore_or_init(abstract_state, init_state, data_iter)
    result = run.train(state, data_iter, step_fn, total_steps=..., steps_per_epoch=...)
    run.write_summary({...})                    # summary.json (with wall_s)

:meth:`TrainingRun.train` is the loop: one ``step_fn(state, host_batch) -> (state,
metrics)`` per step; :class:`~dinolg_jax.runtime.metrics_log.MetricsLog` checks each
step's loss one step behind the dispatch (a non-finite loss raises before anything
from that state is saved) and writes a line every ``config.log_every`` steps, at the
last step, at a stop and after a periodic evaluation; the train state, the Grain
iterator state and the config are checkpointed every ``config.checkpoint.every_steps``
steps, at the last step and at a stop. SIGTERM (:class:`Preemption`) finishes the
current step, checkpoints and returns with status ``"preempted"``; a re-run resumes
where it stopped, the data iterator included, so it ends with the same bytes as an
uninterrupted run.

:func:`jit_step` is the one place a pure step ``(state, batch, *replicated) -> (state,
metrics)`` is jitted with its shardings (state donated).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime.json_file import write_json
from dinolg_jax.runtime.metrics_log import MetricsLog

SUMMARY = "summary.json"
CONFIG = "config.json"


class Preemption:
    """Turns SIGTERM into a flag checked between steps (agreed across processes).

    Use as a context manager around the loop; :meth:`should_stop` after each step.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> Preemption:
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.requested = True

    def should_stop(self, step: int) -> bool:
        """True when this run should checkpoint and stop after ``step``."""
        if jax.process_count() > 1:
            # JAX's preemption notifier (installed by jax.distributed) syncs all processes.
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def jit_step(
    step_fn: Callable[..., tuple[Any, dict[str, jax.Array]]],
    mesh: Mesh,
    state_shardings: Any,
    batch_shardings: Any,
    n_replicated: int = 0,
) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """Jits a pure training step with explicit shardings; the input state is donated.

    Args:
      step_fn: ``(state, batch, *args) -> (state, metrics)``, pure.
      mesh: the (data, fsdp) mesh.
      state_shardings: the state's shardings (a pytree of ``NamedSharding``).
      batch_shardings: the batch's shardings (same structure as the batch).
      n_replicated: number of trailing arguments (keys, flags), replicated.

    Returns:
      The jitted step; metrics come back replicated.
    """
    rep = mesh_lib.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings, *([rep] * n_replicated)),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
    )


def finished_run(workdir: str | os.PathLike, total_steps: int) -> dict[str, Any] | None:
    """The summary of a run that already finished ``total_steps``, or None.

    A run is finished when ``summary.json`` says ``status: done`` at ``step ==
    total_steps``, its checkpoint of that step exists, and its encoder export (when the
    run has one) is of that step: a re-run then returns this at once. An extended run
    (more steps) or one whose last checkpoint is gone gets None (it resumes).
    """
    workdir = Path(workdir)
    try:
        summary = json.loads((workdir / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("status") != "done" or summary.get("step") != total_steps:
        return None
    if summary.get("total_steps") != total_steps:
        return None
    if not (workdir / ckpt_lib.CHECKPOINT_DIR / str(total_steps)).is_dir():
        return None
    if (workdir / ckpt_lib.ENCODER_DIR).exists():
        if ckpt_lib.export_step(workdir / ckpt_lib.ENCODER_DIR) != total_steps:
            return None
    return summary


@dataclasses.dataclass(frozen=True)
class PeriodicEval:
    """An evaluation inside the loop (pretraining's online eval), every ``every`` steps.

    ``fn(state)`` returns fields merged into that step's metrics line (which is then
    written); ``after(step, last_metrics)`` runs once the line is written (e.g. warnings).
    It also runs at the last step.
    """

    every: int
    fn: Callable[[Any], dict[str, float]]
    after: Callable[[int, dict[str, float]], None] | None = None

    def due(self, step: int, last: bool) -> bool:
        """Whether to evaluate after ``step`` (every ``every`` steps and at the last)."""
        return step % self.every == 0 or last


@dataclasses.dataclass
class LoopResult:
    """What :meth:`TrainingRun.train` ends with."""

    state: Any  # the train state after the last step taken
    step: int  # the last step taken
    status: str  # "done" or "preempted"
    log: MetricsLog  # ``log.last`` (last line's metrics), ``log.first_loss``


class TrainingRun:
    """A training run in a workdir: config.json, resume, loop, checkpoints, summary.

    Args:
      workdir: the run's folder (created); an existing run there is resumed.
      config: the run's config, written to ``config.json``; the loop reads
        ``log_every``, ``checkpoint.every_steps | keep | async_save`` and ``tensorboard``.
    """

    def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
        self.t_start = time.perf_counter()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_dict = config.to_dict()
        write_json(self.workdir / CONFIG, self.config_dict)
        self._ckpt: ckpt_lib.Checkpointer | None = None

    def finished(self, total_steps: int) -> dict[str, Any] | None:
        """The finished run's summary when this workdir already ran ``total_steps``."""
        summary = finished_run(self.workdir, total_steps)
        if summary is not None:
            logging.info("%s finished at step %d already", self.workdir, total_steps)
        return summary

    def restore_or_init(
        self, abstract_state: Any, init_state: Callable[[], Any], data_iter: Any
    ) -> tuple[Any, Any]:
        """The newest good checkpoint's state with ``data_iter`` moved to its position,
        or a fresh ``init_state()`` where the workdir holds no run.

        Raises:
          CheckpointError: see :func:`runtime.checkpoint.restore_or_init`.
        """
        ckpt = self.config.checkpoint
        self._ckpt = ckpt_lib.Checkpointer(
            self.workdir / ckpt_lib.CHECKPOINT_DIR,
            max_to_keep=int(ckpt.keep),
            async_save=bool(ckpt.async_save),
        )
        state, data_state = ckpt_lib.restore_or_init(
            self._ckpt, abstract_state, init_state, self.workdir
        )
        if data_state is not None:
            data_iter.set_state(data_state)
        return state, data_iter

    def train(
        self,
        state: Any,
        data_iter: Iterator[Any],
        step_fn: Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]],
        *,
        total_steps: int,
        steps_per_epoch: int,
        evaluation: PeriodicEval | None = None,
        step_sleep_s: float = 0.0,
    ) -> LoopResult:
        """Steps from ``state.step`` to ``total_steps`` (module docstring); closes the
        checkpointer and the log at the end, also on an error.

        Args:
          state: the restored or fresh train state (a pytree with an int ``step``).
          data_iter: the Grain iterator (``get_state``) the state was restored with.
          step_fn: ``(state, host_batch) -> (state, metrics)``; ``metrics["loss"]`` is
            checked; placing the batch on the mesh is the trainer's.
          total_steps: the run's last step.
          steps_per_epoch: for the metrics' ``epoch`` field.
          evaluation: an evaluation inside the loop, or None.
          step_sleep_s: a pause after each step (tests of preemption only).

        Raises:
          runtime.metrics_log.NonFiniteLossError: the loss became NaN/inf.
        """
        if self._ckpt is None:
            raise RuntimeError("TrainingRun.train before restore_or_init")
        log = MetricsLog(
            self.workdir,
            total_steps,
            steps_per_epoch=steps_per_epoch,
            tensorboard=bool(self.config.tensorboard),
        )
        step, status = int(state.step), "done"
        log_every = int(self.config.log_every)
        ckpt_every = int(self.config.checkpoint.every_steps)
        try:
            with Preemption() as preempt:
                while step < total_steps:
                    state, metrics = step_fn(state, next(data_iter))
                    step += 1
                    log.add(step, metrics)  # checks the previous step's loss
                    if step_sleep_s > 0:
                        time.sleep(step_sleep_s)
                    stop = preempt.should_stop(step)
                    last = step == total_steps
                    evaluate = evaluation is not None and evaluation.due(step, last)
                    if evaluate:
                        log.check_previous()
                        log.extra.update(evaluation.fn(state))
                    if step % log_every == 0 or last or stop or evaluate:
                        log.flush(write=True)
                    if evaluate and evaluation.after is not None:
                        evaluation.after(step, log.last)
                    if step % ckpt_every == 0 or last or stop:
                        log.flush(write=False)
                        self._ckpt.save(step, state, data_iter.get_state(), self.config_dict)
                    if stop and not last:
                        status = "preempted"
                        logging.warning("SIGTERM: checkpoint written at step %d, exiting", step)
                        break
        finally:
            self._ckpt.close()
            log.close()
        return LoopResult(state=state, step=step, status=status, log=log)

    def previous_summary(self) -> dict[str, Any]:
        """The ``summary.json`` an earlier run of this workdir left ({} when none)."""
        path = self.workdir / SUMMARY
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Writes ``summary`` plus ``wall_s`` (seconds since this run opened) to
        ``summary.json``; returns it."""
        summary = {**summary, "wall_s": time.perf_counter() - self.t_start}
        write_json(self.workdir / SUMMARY, summary)
        return summary
