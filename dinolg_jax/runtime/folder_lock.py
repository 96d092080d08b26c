"""An exclusive lock on an output folder, so two writers never interleave their files.

``with FolderLock(out, "conversion"):`` takes ``flock(LOCK_EX | LOCK_NB)`` on
``out/.lock`` (created if needed) and writes the holder into it: this process's pid on
the first line, its host name on the second. A second process asking for the same folder
fails at once with `FolderBusyError` naming the folder and the holder (pid and host),
instead of waiting or writing beside the first. The lock belongs to the open file: it is
released when the block ends or the process dies, so a lock file left by a dead process
(killed, crashed, or on a host that went away) is stale and simply taken over, its old
holder overwritten. On Linux NFS ``flock`` is emulated with POSIX byte-range locks, so it
also holds across hosts.

`acquire` / `release` are the same lock held across calls (a training run holds its
workdir from opening it to its summary), re-entrant within one process.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".lock"


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


def _holder(text: str) -> str:
    """``pid P) on host H`` from a lock file's text (``unknown`` for what is missing)."""
    lines = text.split("\n")
    pid = lines[0].strip() or "unknown"
    host = lines[1].strip() if len(lines) > 1 and lines[1].strip() else "unknown"
    return f"pid {pid}) on host {host}"


class FolderLock:
    """Context manager: exclusive, non-blocking lock on ``folder/.lock``."""

    def __init__(self, folder: str | os.PathLike, what: str = "run") -> None:
        """Args: folder: the folder to own (created); what: the writer, for messages."""
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 512, 0).decode(errors="replace"))
            os.close(fd)
            raise FolderBusyError(
                f"another {self.what} ({holder} is writing into {self.folder}; "
                "wait for it to finish or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


_HELD: dict[Path, FolderLock] = {}


def acquire(folder: str | os.PathLike, what: str = "run") -> FolderLock:
    """Takes ``folder``'s lock and keeps it until :func:`release` (or this process ends).

    Re-entrant within this process: a folder this process holds already is returned as is.

    Raises:
      FolderBusyError: another process holds it (the message names its pid and host).
    """
    key = Path(folder).resolve()
    lock = _HELD.get(key)
    if lock is None:
        lock = FolderLock(folder, what).__enter__()
        _HELD[key] = lock
    return lock


def release(folder: str | os.PathLike) -> None:
    """Releases a lock taken by :func:`acquire` (nothing when this process holds none)."""
    lock = _HELD.pop(Path(folder).resolve(), None)
    if lock is not None:
        lock.__exit__(None, None, None)
