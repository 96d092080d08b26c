"""A training run's metrics: ``metrics.jsonl``, TensorBoard scalars, the non-finite stop.

:class:`MetricsLog` buffers each step's device metrics, checks every step's loss one
step behind the dispatch (step k's loss is read once step k + 1 is queued, so the device
never waits for the host), and writes one JSON line per logged step to ``metrics.jsonl``
(and TensorBoard scalars when asked) from process 0::

    {"step", "epoch", <the step's metrics>, "loss_window_mean" (mean loss since the
     last line), <extra fields, e.g. the online eval>, "steps_per_s", "eta_s"}

:class:`NonFiniteLossError`: a NaN or infinite loss stops the run before anything from
that state is saved (the last good checkpoint stays as it was). ``runtime.run`` drives it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from dinolg_jax.runtime.tensorboard import TensorBoardWriter


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving that state."""


def raise_if_nonfinite(step: int, loss: Any) -> None:
    """Raises :class:`NonFiniteLossError` when ``loss`` (a scalar, host or device) is not finite."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"non-finite loss ({value}) at step {step}: stopping; this state is not saved"
        )


class MetricsLog:
    """A run's metrics: the lagged non-finite check and ``metrics.jsonl`` (see module doc).

    Args:
      workdir: the run's folder (``metrics.jsonl``, ``tensorboard/``).
      total_steps: the run's last step (for ``eta_s`` and the log line).
      steps_per_epoch: for the ``epoch`` field.
      tensorboard: also write the lines' float fields as TensorBoard scalars.

    Attributes:
      last: the last flushed step's metrics as floats (with ``loss_window_mean`` and the
        extra fields); empty until the first flush.
      first_loss: the first loss this process fetched (None before).
      extra: fields merged into the next flushed line (e.g. the online eval).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        total_steps: int,
        *,
        steps_per_epoch: int,
        tensorboard: bool = False,
    ) -> None:
        workdir = Path(workdir)
        self.path = workdir / "metrics.jsonl"
        self.total_steps = int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        self.last: dict[str, float] = {}
        self.first_loss: float | None = None
        self.extra: dict[str, float] = {}
        self._lagged: tuple[int, jax.Array] | None = None
        self._t0 = time.perf_counter()
        self._step0: int | None = None
        self._tb = None
        if tensorboard and jax.process_index() == 0:
            self._tb = TensorBoardWriter(workdir / "tensorboard")

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        """Buffers the metrics of the step just dispatched; checks the previous step's loss.

        Raises:
          NonFiniteLossError: the previous step's loss is not finite.
        """
        self.check_previous()
        self._lagged = (step, metrics["loss"])
        if self._step0 is None:
            self._step0 = step - 1
            self._t0 = time.perf_counter()
        self.pending.append((step, metrics))

    def check_previous(self) -> None:
        """Checks the loss of the last added step now (blocks until it is computed)."""
        if self._lagged is not None:
            raise_if_nonfinite(*self._lagged)

    def flush(self, write: bool) -> None:
        """Fetches pending metrics, raises on a non-finite loss, optionally logs the last."""
        if not self.pending:
            return
        fetched = jax.device_get(self.pending)
        self.pending = []
        for step, m in fetched:
            raise_if_nonfinite(step, m["loss"])
        if self.first_loss is None:
            self.first_loss = float(fetched[0][1]["loss"])
        step, m = fetched[-1]
        self.last = {k: float(v) for k, v in m.items()}
        self.last["loss_window_mean"] = float(np.mean([float(x["loss"]) for _, x in fetched]))
        self.last.update(self.extra)
        self.extra = {}
        if not write or jax.process_index() != 0:
            return
        elapsed = time.perf_counter() - self._t0
        done = step - (self._step0 or 0)
        steps_per_s = done / elapsed if elapsed > 0 else 0.0
        line = {"step": step, "epoch": step / self.steps_per_epoch, **self.last}
        line["steps_per_s"] = steps_per_s
        line["eta_s"] = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else None
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        if self._tb is not None:
            for k, v in line.items():
                if isinstance(v, float):
                    self._tb.scalar(k, v, step)
        lr = f" lr {self.last['lr']:.2e}" if "lr" in self.last else ""
        logging.info(
            "step %d/%d loss %.4f%s %.2f steps/s",
            step,
            self.total_steps,
            self.last["loss"],
            lr,
            steps_per_s,
        )
