"""runtime.folder_lock: a second holder is refused naming the first, a dead one's lock is taken.

The other holders are real processes (a child that takes the lock and waits, one that is
killed while holding it), so the checks are the kernel's flock semantics, not a mock.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dinolg_jax.runtime import folder_lock

_HOLD = """
import sys, time
from dinolg_jax.runtime.folder_lock import FolderLock
with FolderLock(sys.argv[1], "training run"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_naming_pid_and_host(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(folder_lock.FolderBusyError) as err:
            folder_lock.acquire(tmp_path, "training run")
        host = socket.gethostname()
        assert str(err.value) == (
            f"another training run (pid {proc.pid}) on host {host} is writing into "
            f"{tmp_path}; wait for it to finish or choose another output folder"
        )
        lines = (tmp_path / ".lock").read_text().splitlines()
        assert lines == [str(proc.pid), host]  # the refused one left the holder as it was
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / ".lock").read_text().split("\n")[0] == str(proc.pid)  # stale
    lock = folder_lock.acquire(tmp_path)
    try:
        assert (tmp_path / ".lock").read_text().split("\n")[0] == str(os.getpid())
        assert folder_lock.acquire(tmp_path) is lock  # re-entrant in this process
    finally:
        folder_lock.release(tmp_path)
    assert (tmp_path / ".lock").read_text() == ""  # released: empty
    folder_lock.release(tmp_path)  # releasing twice is nothing


def test_a_stale_lock_file_from_another_host_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_text("4194303\ngone-host\n")  # no process holds its flock
    with folder_lock.FolderLock(tmp_path, "conversion"):
        lines = (tmp_path / ".lock").read_text().splitlines()
        assert lines == [str(os.getpid()), socket.gethostname()]
        start = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", _HOLD, str(tmp_path)], capture_output=True, text=True
        )
        assert time.perf_counter() - start < 30  # refused at once, not after its sleep
        assert child.returncode != 0 and "held" not in child.stdout
        host = socket.gethostname()
        assert f"another training run (pid {os.getpid()}) on host {host}" in child.stderr
