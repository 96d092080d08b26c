"""One training-run skeleton: everything around a trainer's step, written once.

The three trainers (``train/pretrain.py``, ``train/segment.py``, ``train/supervised.py``)
keep only what differs (their model, state, step and summary fields); a
:class:`TrainingRun` owns the rest::

    run = TrainingRun(workdir, config)          # mkdir, lock, config check + config.json
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
steps, at the last step and at a stop; ``curves.png`` (``runtime.curves``) is redrawn
from ``metrics.jsonl`` at each checkpoint. SIGTERM and Ctrl-C (SIGINT), both through
:class:`Preemption`, finish the current step, checkpoint and return with status
``"preempted"`` after one warning line (a second Ctrl-C stops at once); a re-run resumes
where it stopped, the data iterator included, so it ends with the same bytes as an
uninterrupted run. The terminal shows a progress line with the rate and the time left
(``runtime.progress``).

A workdir belongs to one run at a time: :class:`TrainingRun` holds ``workdir/.lock``
(``runtime.folder_lock``) from its start to its summary, so a second run started into
the same workdir stops at once naming the holder's pid and host (a lock left by a dead
process is taken over). A workdir that already holds a run keeps its config: a re-run
whose config differs from the stored ``config.json`` in any key but those of
:data:`HARMLESS_KEYS` (cadences, the run's length, faults, device layout, reader
buffers) stops with :class:`ConfigMismatchError` naming the keys, and ``config.json`` is
left as it was.

:func:`jit_step` is the one place a pure step ``(state, batch, *replicated) -> (state,
metrics)`` is jitted with its shardings (state donated).
"""

from __future__ import annotations

import dataclasses
import fnmatch
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
from dinolg_jax.runtime import curves as curves_lib
from dinolg_jax.runtime import folder_lock
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime.cli import UsageError
from dinolg_jax.runtime.json_file import read_json_dict, write_json
from dinolg_jax.runtime.metrics_log import MetricsLog
from dinolg_jax.runtime.progress import Progress

SUMMARY = "summary.json"
CONFIG = "config.json"

# Config keys (dotted paths, fnmatch patterns) a re-run may change in a workdir that holds
# a run: how often it logs, checkpoints and evaluates, how long it runs (extending a run
# is resuming it), injected faults, the device layout, and the data readers' parallelism
# and buffers (same records, same order). Everything else (model, data, crops, optimiser,
# loss, seeds, splits, the manifest) changes what is trained, so it must match.
HARMLESS_KEYS = (
    "log_every",
    "tensorboard",
    "eval_every",
    "checkpoint.*",
    "debug.*",
    "mesh.*",
    "num_steps",
    "num_epochs",
    "optim.epochs",
    "optim.num_steps",
    "data.worker_count",
    "data.worker_buffer_size",
    "data.read_buffer_size",
    "online_eval.batch_size",
    "eval.batch_size",
)


class ConfigMismatchError(UsageError):
    """The workdir holds a run with another config (a usage error: exit status 2)."""


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted path: leaf value}; an empty dict is a leaf."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two configs (JSON form), a key present
    in one only included, except those matching :data:`HARMLESS_KEYS`; sorted."""
    plain = json.loads(json.dumps(new, sort_keys=True, default=str))
    old, now = _leaves(stored), _leaves(plain)
    missing = object()
    return sorted(
        key
        for key in set(old) | set(now)
        if old.get(key, missing) != now.get(key, missing)
        and not any(fnmatch.fnmatchcase(key, pattern) for pattern in HARMLESS_KEYS)
    )


def require_same_config(workdir: str | os.PathLike, config: dict[str, Any]) -> None:
    """Checks a re-run's config against the one ``workdir/config.json`` holds.

    A workdir without a readable ``config.json`` (new, or one cut short by a crash)
    passes; keys of :data:`HARMLESS_KEYS` may differ.

    Args:
      workdir: a run's folder.
      config: the new run's config (``ConfigDict.to_dict()``).

    Raises:
      ConfigMismatchError: the stored config differs (the first 8 keys named).
    """
    stored = read_json_dict(Path(workdir) / CONFIG)
    if stored is None:
        return
    differ = config_differences(stored, config)
    if differ:
        shown = ", ".join(differ[:8]) + (f" (+{len(differ) - 8} more)" if len(differ) > 8 else "")
        raise ConfigMismatchError(
            f"{workdir} holds a run with another config (differs in {shown}); "
            "re-run with its config.json, or choose a new workdir"
        )


class Preemption:
    """Turns SIGTERM and SIGINT (Ctrl-C) into a flag checked between steps (agreed across
    processes for SIGTERM).

    Use as a context manager around the loop; :meth:`should_stop` after each step. A
    second SIGINT while the first is pending raises ``KeyboardInterrupt`` at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Preemption:
        if jax.process_count() == 1:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def should_stop(self, step: int) -> bool:
        """True when this run should checkpoint and stop after ``step``."""
        if jax.process_count() > 1:
            # JAX's preemption notifier (installed by jax.distributed) syncs all processes.
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


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
    summary = read_json_dict(workdir / SUMMARY)  # truncated or corrupt: as if missing
    if summary is None:
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

    Raises:
      FolderBusyError: another process runs in ``workdir`` (its pid and host named).
      ConfigMismatchError: ``workdir/config.json`` holds another config (the keys named,
        see :data:`HARMLESS_KEYS`); nothing in the workdir is changed.
    """

    def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
        self.t_start = time.perf_counter()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:  # the others share process 0's workdir
            folder_lock.acquire(self.workdir, "training run")
        self.config = config
        self.config_dict = config.to_dict()
        try:
            require_same_config(self.workdir, self.config_dict)
        except ConfigMismatchError:
            self.close()
            raise
        write_json(self.workdir / CONFIG, self.config_dict)
        self._ckpt: ckpt_lib.Checkpointer | None = None

    def close(self) -> None:
        """Releases the workdir (its lock); :meth:`write_summary` and a finished
        :meth:`finished` do it, and a process that ends releases it too."""
        folder_lock.release(self.workdir)

    def finished(self, total_steps: int) -> dict[str, Any] | None:
        """The finished run's summary when this workdir already ran ``total_steps``
        (the workdir is then released)."""
        summary = finished_run(self.workdir, total_steps)
        if summary is not None:
            logging.info("%s finished at step %d already", self.workdir, total_steps)
            self.close()
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
        progress = Progress(total_steps, step, enabled=jax.process_index() == 0)
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
                    checkpoint = step % ckpt_every == 0 or last or stop
                    if evaluate or checkpoint or step % log_every == 0 or stop:
                        progress.clear()  # log lines start on a clean terminal line
                    if evaluate:
                        log.check_previous()
                        log.extra.update(evaluation.fn(state))
                    if step % log_every == 0 or last or stop or evaluate:
                        log.flush(write=True)
                    if evaluate and evaluation.after is not None:
                        evaluation.after(step, log.last)
                    if checkpoint:
                        log.flush(write=False)
                        self._ckpt.save(step, state, data_iter.get_state(), self.config_dict)
                        self._write_curves()
                    progress.update(step)
                    if stop and not last:
                        status = "preempted"
                        progress.close()
                        logging.warning(
                            "%s: checkpoint written at step %d, exiting; re-run the same "
                            "command to resume",
                            preempt.signal_name or "preemption",
                            step,
                        )
                        break
        finally:
            progress.close()
            self._ckpt.close()
            log.close()
        return LoopResult(state=state, step=step, status=status, log=log)

    def _write_curves(self) -> None:
        """``curves.png`` from ``metrics.jsonl`` (process 0); a failure is one warning."""
        if jax.process_index() != 0:
            return
        try:
            curves_lib.write_run_curves(self.workdir)
        except Exception as e:  # a figure never stops a run
            logging.warning("curves.png not written: %s: %s", type(e).__name__, e)

    def previous_summary(self) -> dict[str, Any]:
        """The ``summary.json`` an earlier run of this workdir left ({} when none, or
        when it is truncated or corrupt: the run then resumes from its checkpoints)."""
        return read_json_dict(self.workdir / SUMMARY) or {}

    def write_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Writes ``summary`` plus ``wall_s`` (seconds since this run opened) to
        ``summary.json``, releases the workdir; returns the summary."""
        summary = {**summary, "wall_s": time.perf_counter() - self.t_start}
        write_json(self.workdir / SUMMARY, summary)
        self.close()
        return summary
