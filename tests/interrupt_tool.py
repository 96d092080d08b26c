"""Ctrl-C a conversion tool part-way, as a person would (shared by the conversion tests).

``from interrupt_tool import interrupt``: runs the tool with one function of the package
slowed by a second a call (so its per-study loop is still running), waits until the
tool has removed the folder's old ``manifest.json``, sends SIGINT and returns the exit
status with stderr's lines, progress bars left out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_SLOWED = """
import importlib, runpy, sys, time
module = importlib.import_module({module!r})
original = getattr(module, {function!r})
def slowed(*args, **kwargs):
    time.sleep(1.0)
    return original(*args, **kwargs)
setattr(module, {function!r}, slowed)
sys.argv = [{tool!r}, *sys.argv[1:]]
runpy.run_path({tool!r}, run_name="__main__")
"""


def interrupt(
    tool: Path, slow: str, args: list[str], out: Path, scratch: Path
) -> tuple[int, list[str]]:
    """Runs `tool` with `slow` ("package.module.function") slowed, Ctrl-C once `out` has no
    manifest.json; returns (exit status, stderr lines without progress bars)."""
    module, function = slow.rsplit(".", 1)
    script = scratch / f"slowed_{tool.stem}.py"
    script.write_text(_SLOWED.format(module=module, function=function, tool=str(tool)))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # A shell starts background jobs (`make test &`, nohup) with SIGINT ignored, and a child
    # inherits that: the tool would never see the Ctrl-C. A person's terminal delivers it,
    # so the tool starts with the default disposition, as it would there.
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while (out / "manifest.json").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    time.sleep(0.2)  # inside the (slowed) study loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and "it/s]" not in ln]
    return proc.returncode, lines
