"""A training run's progress in the terminal: step, steps/s and time left.

:class:`Progress` is fed the step after each training step (``runtime.run`` does that for
every trainer). On a terminal it keeps one line up to date in place (``\\r``, at most
every ``redraw_s`` seconds); otherwise (a log file, a pipe) it writes a plain line every
``every_s`` seconds, so a log shows the pace without a line per step. Either way the last
step gets its line. The rate is measured from the first step this process took after its
first (compiling) one, so the ETA is not skewed by compilation; it only goes to the
terminal (stderr), never into a file the run writes, so it changes no run's bytes.

Line: ``step 120/600 (20%) | 3.41 steps/s | 2m21s left`` (``rate ...`` until a rate is
known).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``2m21s`` or ``7s`` (rounded to the second)."""
    s = round(max(seconds, 0.0))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """The progress line of one training loop (see module docstring).

    Args:
      total_steps: the run's last step.
      start_step: the step the loop starts from (a resumed run's checkpoint step).
      stream: where lines go (default ``sys.stderr``).
      tty: whether ``stream`` is a terminal (default: ``stream.isatty()``).
      every_s: seconds between plain lines when not a terminal.
      redraw_s: seconds between redraws of the terminal line.
      clock: seconds, monotonic (tests pass a fake).
      enabled: False writes nothing (processes other than 0).
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        every_s: float = 30.0,
        redraw_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        self.total_steps = int(total_steps)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(self.stream.isatty()) if tty is None else tty
        self.every_s = float(every_s)
        self.redraw_s = float(redraw_s)
        self.clock = clock
        self.enabled = enabled
        self._first_step = int(start_step) + 1  # its duration includes compilation
        self._t_first: float | None = None  # when the first step ended
        self._last_out = clock()
        self._shown = False  # a terminal line is on screen

    def rate(self, step: int, now: float) -> float | None:
        """Steps per second since the first step ended (None until two steps were taken)."""
        if self._t_first is None or step <= self._first_step or now <= self._t_first:
            return None
        return (step - self._first_step) / (now - self._t_first)

    def line(self, step: int, now: float) -> str:
        """The progress text at ``step`` (no newline)."""
        pct = 100.0 * step / self.total_steps if self.total_steps else 100.0
        head = f"step {step}/{self.total_steps} ({pct:.0f}%)"
        rate = self.rate(step, now)
        if rate is None:
            return f"{head} | rate ..."
        left = (self.total_steps - step) / rate
        return f"{head} | {rate:.2f} steps/s | {format_duration(left)} left"

    def update(self, step: int) -> None:
        """Called after ``step`` finished: redraws or writes the line when it is due."""
        now = self.clock()
        if step == self._first_step:
            self._t_first = now
        if not self.enabled:
            return
        last = step >= self.total_steps
        if self.tty:
            if last or now - self._last_out >= self.redraw_s:
                self._write("\r" + self.line(step, now) + "\x1b[K")
                self._shown = True
                self._last_out = now
        elif last or now - self._last_out >= self.every_s:
            self._write(self.line(step, now) + "\n")
            self._last_out = now

    def clear(self) -> None:
        """Erases the terminal line, so a log line that follows starts on a clean line."""
        if self.enabled and self.tty and self._shown:
            self._write("\r\x1b[K")
            self._shown = False

    def close(self) -> None:
        """Ends the terminal line (the last state stays on screen)."""
        if self.enabled and self.tty and self._shown:
            self._write("\n")
            self._shown = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
