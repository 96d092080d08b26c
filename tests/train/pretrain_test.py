"""End-to-end tests of train/pretrain.py (the step's sharding tests: multihost_test.py).

Through ``tools/pretrain.py`` (subprocesses sharing a compilation cache, cheap XLA code
generation) on synthetic records: an uninterrupted run; a run stopped by SIGTERM and
resumed, which must end with the same ``params_checksum`` (bitwise on CPU) and log the
same losses; a run whose loss is made NaN, which must stop with the message and leave its
last good checkpoint intact: loadable and equal to the uninterrupted run's checkpoint of
that step (two runs with one seed give the same bytes). Plus the TensorBoard event
writer, decoded by an independent reader.
"""

import dataclasses
import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from dinolg_jax.dino import step as step_lib
from dinolg_jax.phantom.synthetic_records import write_dataset
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime.tensorboard import TensorBoardWriter

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "pretrain.py"


def tiny_config():
    spec = importlib.util.spec_from_file_location("dinolg_config", ROOT / "configs" / "dinolg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("tiny")


FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _env(cache_dir):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAGS}"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _start(workdir, manifest, cache_dir, *overrides):
    cmd = [
        sys.executable,
        str(TOOL),
        "--config",
        f"{ROOT / 'configs' / 'dinolg.py'}:tiny",
        "--workdir",
        str(workdir),
        f"--config.data.manifest={manifest}",
        *overrides,
    ]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(cache_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"pretrain timed out\n{err[-3000:]}")
    return proc.returncode, out, err


def _losses(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return {d["step"]: d["loss"] for d in map(json.loads, lines)}


def _checkpoint_checksum(workdir, step):
    config = tiny_config()
    trainer = step_lib.make_trainer(config, mesh_lib.make_mesh(), steps_per_epoch=3)
    ckpt = ckpt_lib.Checkpointer(Path(workdir) / "checkpoints")
    state, data_state, saved_config = ckpt.restore(step, trainer.abstract_state)
    ckpt.close()
    assert data_state is not None and saved_config["data"]["batch_size"] == 8
    finite = all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    return finite, int(state.step), ckpt_lib.params_checksum(state.params)


@pytest.mark.slow
def test_pretrain_resume_is_exact_and_nan_guard_keeps_last_good_checkpoint(tmp_path):
    manifest = write_dataset(tmp_path / "data", size=64, studies=4, slices_per_study=6)
    cache = tmp_path / "jax_cache"
    straight, resumed, bad = tmp_path / "straight", tmp_path / "resumed", tmp_path / "nan"

    # Uninterrupted run (6 steps) beside a run that gets SIGTERM after its first step.
    a = _start(straight, manifest, cache)
    b = _start(resumed, manifest, cache, "--config.debug.step_sleep_s=0.5")
    deadline = time.monotonic() + 240
    while not (resumed / "metrics.jsonl").is_file() and b.poll() is None:
        assert time.monotonic() < deadline, "no metrics from the run to interrupt"
        time.sleep(0.02)
    b.send_signal(signal.SIGTERM)
    rc_b, _, err_b = _finish(b)
    rc_a, _, err_a = _finish(a)
    assert rc_a == 0, err_a[-3000:]
    assert rc_b == 0, err_b[-3000:]
    summary_a = json.loads((straight / "summary.json").read_text())
    assert summary_a["status"] == "done" and summary_a["step"] == 6
    assert (straight / "encoder" / "model_config.json").is_file()
    interrupted = json.loads((resumed / "summary.json").read_text())
    assert interrupted["status"] == "preempted"
    k = interrupted["step"]
    assert 1 <= k < 6
    assert ckpt_lib.Checkpointer(resumed / "checkpoints").latest_step() == k

    # Resume the interrupted run; meanwhile a run whose loss turns NaN in step 4.
    c = _start(resumed, manifest, cache)
    d = _start(bad, manifest, cache, "--config.debug.nan_at_step=3")
    rc_c, _, err_c = _finish(c)
    rc_d, _, err_d = _finish(d)
    assert rc_c == 0, err_c[-3000:]
    summary_c = json.loads((resumed / "summary.json").read_text())
    assert summary_c["status"] == "done" and summary_c["step"] == 6
    assert summary_c["params_checksum"] == summary_a["params_checksum"]
    assert _losses(resumed) == _losses(straight)  # every step, bitwise

    assert rc_d == 1
    assert "non-finite loss (nan) at step 4" in err_d
    assert not (bad / "summary.json").exists()
    assert ckpt_lib.Checkpointer(bad / "checkpoints").all_steps() == [2]
    finite, step, checksum = _checkpoint_checksum(bad, 2)
    assert finite and step == 2
    assert (finite, step, checksum) == _checkpoint_checksum(straight, 2)

    # Re-running the finished run returns at once with its summary; nothing is rewritten.
    metrics_before = (straight / "metrics.jsonl").read_text()
    encoder_before = sorted((p, p.stat().st_mtime_ns) for p in (straight / "encoder").rglob("*"))
    rc, out, err = _finish(_start(straight, manifest, cache))
    assert rc == 0, err[-3000:]
    assert (
        json.loads(out.strip().splitlines()[-1])["params_checksum"] == summary_a["params_checksum"]
    )
    assert json.loads((straight / "summary.json").read_text()) == summary_a
    assert (straight / "metrics.jsonl").read_text() == metrics_before
    assert sorted((p, p.stat().st_mtime_ns) for p in (straight / "encoder").rglob("*")) == (
        encoder_before
    )
    # Extending it (3 epochs = 9 steps): it resumes at 6, and the encoder and the summary
    # are both of step 9.
    rc, _, err = _finish(_start(straight, manifest, cache, "--config.num_epochs=3"))
    assert rc == 0, err[-3000:]
    extended = json.loads((straight / "summary.json").read_text())
    assert (extended["step"], extended["total_steps"], extended["status"]) == (9, 9, "done")
    assert [s for s in _losses(straight) if s > 6] == [7, 8, 9]
    export = json.loads((straight / "encoder" / "export.json").read_text())
    assert export["step"] == 9
    params, _ = ckpt_lib.load_encoder(straight)
    assert ckpt_lib.params_checksum(params) == export["params_checksum"]
    assert extended["params_checksum"] != summary_a["params_checksum"]


def _read_varint(buf, pos):
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(buf):
    """Decodes one protobuf message into {field number: [values]} (wire types 0, 1, 2, 5)."""
    out, pos = {}, 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack("<d", buf[pos : pos + 8])[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack("<f", buf[pos : pos + 4])[0], pos + 4
        else:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        out.setdefault(number, []).append(value)
    return out


def test_tensorboard_writer_event_file(tmp_path):
    writer = TensorBoardWriter(tmp_path)
    writer.scalar("loss", 2.5, step=7)
    writer.scalar("lr", 1e-3, step=8)
    writer.close()
    data = writer.path.read_bytes()
    records, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        payload = data[pos + 12 : pos + 12 + length]
        # masked CRC-32C of the payload, checked with an independent bitwise CRC
        crc = 0xFFFFFFFF
        for byte in payload:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        crc ^= 0xFFFFFFFF
        masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
        assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == masked
        records.append(_fields(payload))
        pos += 16 + length
    assert records[0][3] == [b"brain.Event:2"]  # Event.file_version
    scalars = []
    for event in records[1:]:
        value = _fields(_fields(event[5][0])[1][0])  # Event.summary -> Summary.value
        scalars.append((event[2][0], value[1][0].decode(), value[2][0]))
    assert scalars == [(7, "loss", 2.5), (8, "lr", np.float32(1e-3))]


@pytest.mark.slow
def test_non_finite_loss_stops_at_that_step_not_at_the_next_log_line(tmp_path, monkeypatch):
    """With log and checkpoint lines far apart, a NaN at step 4 stops the run by step 5."""
    from dinolg_jax.runtime.metrics_log import NonFiniteLossError
    from dinolg_jax.train import pretrain as pretrain_lib

    manifest = write_dataset(tmp_path / "data", size=32)
    config = tiny_config()
    config.data.manifest = str(manifest)
    config.num_steps = 12
    config.log_every = 100
    config.eval_every = 0
    config.checkpoint.every_steps = 100
    config.debug.nan_at_step = 3  # the step taking state.step 3 -> 4
    config.num_epochs = 20.0  # the schedule is longer than num_steps
    calls = []
    make = step_lib.make_trainer

    def counting_trainer(*args, **kwargs):
        trainer = make(*args, **kwargs)
        step = trainer.step

        def counted(*a):
            calls.append(1)
            return step(*a)

        return dataclasses.replace(trainer, step=counted)

    monkeypatch.setattr(step_lib, "make_trainer", counting_trainer)
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        pretrain_lib.pretrain(config, tmp_path / "run")
    # step 4's loss is read once step 5 is queued: 5 dispatches, not 12 (the last line)
    assert len(calls) == 5
    assert not (tmp_path / "run" / "summary.json").exists()
    assert (
        not (tmp_path / "run" / "metrics.jsonl").exists()
        or not (tmp_path / "run" / "metrics.jsonl").read_text()
    )
