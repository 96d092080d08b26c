"""The environment lock: requirements.lock agrees with requirements.txt and with .venv.

`make lock` compiles requirements.txt (the human-edited pins) into requirements.lock (every
package, with hashes) and requirements-cuda12.in into requirements-cuda12.lock. These tests
fail when someone edits requirements.txt without re-locking, when a lock entry lacks its
hashes (pip's --require-hashes would refuse the whole install), or when the interpreter
running the tests has other versions than the lock says (the tests then did not run in the
locked environment).
"""

import importlib.metadata
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """Normalised package name -> pinned version of a requirements or lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def lock_entries(path: Path) -> dict[str, list[str]]:
    """Package -> its ``--hash`` values, from a pip-compile / uv style lock file."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            current = _norm(m.group(1))
            entries[current] = []
        for h in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            assert current is not None, f"{path.name}: hash before any package"
            entries[current].append(h)
    return entries


@pytest.mark.parametrize(
    "source,lock",
    [
        ("requirements.txt", "requirements.lock"),
        ("requirements-cuda12.in", "requirements-cuda12.lock"),
    ],
)
def test_lock_holds_every_direct_pin_with_hashes(source, lock):
    wanted = read_pins(ROOT / "requirements.txt") | read_pins(ROOT / source)
    entries = lock_entries(ROOT / lock)
    locked = read_pins(ROOT / lock)
    stale = {k: (v, locked.get(k)) for k, v in wanted.items() if locked.get(k) != v}
    assert not stale, f"{lock} disagrees with {source} (want, locked): {stale}; run `make lock`"
    unhashed = sorted(k for k, h in entries.items() if not h)
    assert not unhashed, f"{lock}: entries without --hash: {unhashed}"
    assert len(entries) > len(wanted), f"{lock} holds no transitive packages"


def test_cuda_lock_is_the_cpu_lock_plus_the_cuda_plugin():
    cpu, gpu = read_pins(ROOT / "requirements.lock"), read_pins(ROOT / "requirements-cuda12.lock")
    assert read_pins(ROOT / "requirements-cuda12.in")["jax"] == cpu["jax"]
    assert gpu["jax-cuda12-plugin"] == cpu["jax"], "the CUDA plugin must match the jax pin"
    moved = {k: (v, gpu.get(k)) for k, v in cpu.items() if gpu.get(k) != v}
    assert not moved, f"the CUDA lock moves CPU pins (cpu, cuda): {moved}"


def test_running_environment_is_the_lock():
    locked = read_pins(ROOT / "requirements.lock")
    installed = {_norm(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    differ = {k: (v, installed.get(k)) for k, v in locked.items() if installed.get(k) != v}
    assert not differ, f"installed packages differ from requirements.lock (lock, here): {differ}"
