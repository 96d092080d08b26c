"""An exclusive lock on an output folder, so two writers never interleave their files.

``with FolderLock(out, "conversion"):`` takes ``flock(LOCK_EX | LOCK_NB)`` on
``out/.lock`` (created if needed) and writes this process's pid into it. A second
process asking for the same folder fails at once with `FolderBusyError` naming the
folder and the holder's pid, instead of waiting or writing beside the first. The lock
belongs to the open file: it is released when the block ends or the process dies (a
killed run leaves no stale lock; the file itself stays, empty of meaning). On Linux NFS
``flock`` is emulated with POSIX byte-range locks, so it also holds across hosts.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".lock"


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


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
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusyError(
                f"another {self.what} (pid {holder}) is writing into {self.folder}; "
                "wait for it to finish or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
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
