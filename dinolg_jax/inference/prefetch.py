"""Bounded background prefetch: the next study is read while the current one is scored.

`Prefetcher` runs an iterator in one background thread, at most ``depth`` items ahead of
the consumer, and hands the items over in order. Reading a study (pydicom, NIfTI, numpy)
and scoring it on the device (XLA releases the GIL) then overlap, so a run over a dataset
takes about ``max(read, score)`` per study instead of ``read + score``. `timed_calls`
turns per-item callables into ``(value, error, seconds)`` outcomes, so one study failing
to read does not stop the others.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_END = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def _produce(
    it: Iterator[Any], slots: threading.Semaphore, out: queue.SimpleQueue, stop: threading.Event
) -> None:
    while True:
        slots.acquire()
        if stop.is_set():
            return
        try:
            item = next(it)
        except StopIteration:
            out.put(_END)
            return
        except BaseException as e:  # handed to the consumer
            out.put(_Raised(e))
            return
        out.put(item)


class Prefetcher(Generic[T], Iterator[T]):
    """Iterates `source` in a background thread, at most `depth` items ahead, in order.

    At most ``depth`` items are produced but not yet returned by ``next`` (being made or
    waiting), so memory is bounded by ``depth + 1`` items with the consumer's own. An
    exception raised by `source` is raised by ``next`` at its position, and ends the
    iteration. ``close`` (also on garbage collection) stops the thread early.

    Args:
      source: any iterable; iterated only by the background thread.
      depth: items made ahead, >= 1.
    """

    def __init__(self, source: Iterable[T], depth: int = 1):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._slots = threading.Semaphore(depth)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._done = False
        # The thread holds no reference to self, so an abandoned prefetcher is collected
        # (and its thread stopped by __del__).
        args = (iter(source), self._slots, self._queue, self._stop)
        self._thread = threading.Thread(target=_produce, args=args, name="prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _Raised):
            self._done = True
            self._thread.join()
            if item is _END:
                raise StopIteration
            raise item.error
        self._slots.release()
        return item

    def close(self) -> None:
        """Stops the background thread (items not yet returned are dropped)."""
        self._done = True
        self._stop.set()
        self._slots.release()  # wake the thread if it waits for a slot

    def __del__(self) -> None:
        if hasattr(self, "_thread"):  # not when __init__ raised
            self.close()


def timed_calls(
    calls: Iterable[Callable[[], T]],
) -> Iterator[tuple[T | None, Exception | None, float]]:
    """``(value, None, seconds)`` or ``(None, error, seconds)`` of each call, in order."""
    for call in calls:
        t0 = time.perf_counter()
        try:
            value, error = call(), None
        except Exception as e:
            value, error = None, e
        yield value, error, time.perf_counter() - t0
