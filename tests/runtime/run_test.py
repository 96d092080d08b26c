"""runtime.run: the training-run skeleton on a toy run whose every number is known.

The toy state counts steps and sums the batches it saw (``total``); the data iterator
yields 1, 2, 3, ... and restores from ``{"next": k}``. After n steps from a fresh start,
``total`` is n (n + 1) / 2 whatever interruptions happened, if the skeleton restores the
state and the iterator consistently.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import pytest
from PIL import Image

from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import curves as curves_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime import run as run_lib
from dinolg_jax.runtime.metrics_log import NonFiniteLossError


@flax.struct.dataclass
class ToyState:
    step: jax.Array
    total: jax.Array


class Counter:
    """1, 2, 3, ... with Grain's get_state / set_state."""

    def __init__(self) -> None:
        self.next = 1

    def __iter__(self):
        return self

    def __next__(self) -> int:
        value, self.next = self.next, self.next + 1
        return value

    def get_state(self) -> dict[str, int]:
        return {"next": self.next}

    def set_state(self, state: dict[str, int]) -> None:
        self.next = int(state["next"])


def _config(every: int = 4, log_every: int = 2) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"log_every": log_every, "tensorboard": False,
         "checkpoint": {"every_steps": every, "keep": 2, "async_save": False}}
    )  # fmt: skip


def _step(state: ToyState, x: int, nan_at: int = -1):
    total = state.total + x
    loss = jnp.where(state.step + 1 == nan_at, jnp.nan, total.astype(jnp.float32))
    return ToyState(state.step + 1, total), {"loss": loss}


def _run(workdir, total_steps: int, config=None, step=_step):
    run = run_lib.TrainingRun(workdir, config or _config())
    done = run.finished(total_steps)
    if done is not None:
        return done
    rep = mesh_lib.replicated(mesh_lib.make_mesh())

    def init() -> ToyState:
        return jax.device_put(ToyState(jnp.int32(0), jnp.int32(0)), rep)

    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), jax.eval_shape(init)
    )
    state, data = run.restore_or_init(abstract, init, Counter())
    result = run.train(state, data, step, total_steps=total_steps, steps_per_epoch=5)
    return run.write_summary(
        {"step": result.step, "total_steps": total_steps, "status": result.status,
         "total": int(result.state.total), "metrics": result.log.last}
    )  # fmt: skip


def _lines(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_loop_writes_lines_and_checkpoints_at_their_cadence(tmp_path):
    out = _run(tmp_path, 10)
    assert (out["status"], out["step"], out["total"]) == ("done", 10, 55)
    assert [x["step"] for x in _lines(tmp_path)] == [2, 4, 6, 8, 10]
    assert _lines(tmp_path)[-1]["loss"] == 55.0 and _lines(tmp_path)[0]["epoch"] == 0.4
    # checkpoints every 4 steps and at the end, the newest 2 kept
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [8, 10]
    assert json.loads((tmp_path / "config.json").read_text())["log_every"] == 2
    assert out["wall_s"] > 0


def test_a_preempted_run_resumes_state_and_data_where_it_stopped(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(run_lib.Preemption, "should_stop", lambda self, step: step == 3)
        cut = _run(tmp_path, 10)
    assert (cut["status"], cut["step"], cut["total"]) == ("preempted", 3, 6)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [3]
    assert run_lib.finished_run(tmp_path, 10) is None
    done = _run(tmp_path, 10)
    assert (done["status"], done["step"], done["total"]) == ("done", 10, 55)  # 1 + ... + 10
    assert [x["step"] for x in _lines(tmp_path)] == [2, 3, 4, 6, 8, 10]
    # a re-run of the finished run returns its summary without a step
    assert _run(tmp_path, 10) == done
    # a longer run resumes from step 10
    assert _run(tmp_path, 12)["total"] == 78


def test_a_non_finite_loss_stops_before_its_state_is_saved(tmp_path):
    with pytest.raises(NonFiniteLossError, match="at step 6"):
        _run(tmp_path, 10, step=lambda s, x: _step(s, x, nan_at=6))
    # the step-4 checkpoint is the last one; step 6's state never reached a checkpoint
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4]
    assert not (tmp_path / "summary.json").exists()


def test_finished_run_needs_the_summary_the_checkpoint_and_the_export_of_that_step(tmp_path):
    summary = {"status": "done", "step": 7, "total_steps": 7}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert run_lib.finished_run(tmp_path, 7) is None  # no checkpoint 7
    (tmp_path / ckpt_lib.CHECKPOINT_DIR / "7").mkdir(parents=True)
    assert run_lib.finished_run(tmp_path, 7) == summary
    assert run_lib.finished_run(tmp_path, 8) is None  # an extended run resumes
    export = tmp_path / ckpt_lib.ENCODER_DIR
    export.mkdir()
    assert run_lib.finished_run(tmp_path, 7) is None  # an export without export.json
    (export / "export.json").write_text(json.dumps({"step": 6}))
    assert run_lib.finished_run(tmp_path, 7) is None  # the export of another step
    (export / "export.json").write_text(json.dumps({"step": 7}))
    assert run_lib.finished_run(tmp_path, 7) == summary
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "status": "preempted"}))
    assert run_lib.finished_run(tmp_path, 7) is None


def test_ctrl_c_is_a_preemption_and_a_second_one_stops_at_once(tmp_path):
    def interrupted(state, x, times=1):
        if x == 3:  # the signal arrives while step 3 runs
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return _step(state, x)

    before = signal.getsignal(signal.SIGINT)
    cut = _run(tmp_path / "a", 10, step=interrupted)
    assert (cut["status"], cut["step"], cut["total"]) == ("preempted", 3, 6)
    assert sorted(int(p.name) for p in (tmp_path / "a" / "checkpoints").iterdir()) == [3]
    assert signal.getsignal(signal.SIGINT) == before  # Python's Ctrl-C handler is back
    assert _run(tmp_path / "a", 10)["total"] == 55  # resumed: 1 + ... + 10
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", 10, step=lambda s, x: interrupted(s, x, times=2))
    assert signal.getsignal(signal.SIGINT) == before


def test_a_truncated_summary_is_a_missing_one_and_the_run_resumes(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(run_lib.Preemption, "should_stop", lambda self, step: step == 4)
        _run(tmp_path, 10)
    for broken in ('{"status": "done", "st', "[1, 2]", "\x00\xff"):
        (tmp_path / "summary.json").write_text(broken)
        assert run_lib.finished_run(tmp_path, 10) is None
        assert run_lib.TrainingRun(tmp_path, _config()).previous_summary() == {}
    done = _run(tmp_path, 10)
    assert (done["status"], done["step"], done["total"]) == ("done", 10, 55)


def test_config_differences_name_the_keys_and_skip_the_harmless_ones():
    stored = {"seed": 0, "log_every": 10, "model": {"width": 8, "depth": 2},
              "checkpoint": {"every_steps": 5}, "data": {"batch_size": 4, "worker_count": 0},
              "ratio": [0.75, 1.25]}  # fmt: skip
    new = {"seed": 0, "log_every": 5, "model": {"width": 16, "depth": 2, "heads": 2},
           "checkpoint": {"every_steps": 7}, "data": {"batch_size": 4, "worker_count": 8},
           "ratio": (0.75, 1.5)}  # fmt: skip
    assert run_lib.config_differences(stored, new) == ["model.heads", "model.width", "ratio"]
    assert run_lib.config_differences(stored, {**stored, "ratio": (0.75, 1.25)}) == []


def test_a_rerun_with_another_config_stops_naming_the_keys_and_keeps_config_json(tmp_path):
    config = _config()
    config.model = {"width": 8}
    _run(tmp_path, 6, config)
    stored = (tmp_path / "config.json").read_bytes()
    other = _config(every=2, log_every=3)  # cadences may change: the run is extended
    other.model = {"width": 8}
    assert _run(tmp_path, 8, other)["total"] == 36
    stored = (tmp_path / "config.json").read_bytes()
    other.model.width = 16
    other.seed = 1
    with pytest.raises(run_lib.ConfigMismatchError) as err:
        _run(tmp_path, 8, other)
    assert str(err.value) == (
        f"{tmp_path} holds a run with another config (differs in model.width, seed); "
        "re-run with its config.json, or choose a new workdir"
    )
    assert (tmp_path / "config.json").read_bytes() == stored
    assert (tmp_path / ".lock").read_text() == ""  # refused: the workdir is free again


def test_the_run_draws_curves_png_from_its_log_at_each_checkpoint(tmp_path, monkeypatch):
    drawn = []
    real = curves_lib.write_run_curves
    monkeypatch.setattr(
        curves_lib, "write_run_curves", lambda w: drawn.append(real(w)) or drawn[-1]
    )
    _run(tmp_path, 10)
    # checkpoints at 4, 8 and 10; each figure holds the lines written so far
    assert [d["loss"]["step"][0] for d in drawn] == [[2, 4], [2, 4, 6, 8], [2, 4, 6, 8, 10]]
    assert drawn[-1]["loss"]["step"][1] == [3.0, 10.0, 21.0, 36.0, 55.0]  # n (n + 1) / 2
    with Image.open(tmp_path / "curves.png") as png:
        assert png.size == curves_lib.figure_size_px(1)


_TOOL = """
import time
import flax, jax, jax.numpy as jnp, ml_collections
from absl import flags
from dinolg_jax.runtime import cli, mesh as mesh_lib, run as run_lib

flags.DEFINE_string("workdir", None, "")
flags.DEFINE_integer("width", 8, "")
flags.DEFINE_float("sleep", 0.0, "")

@flax.struct.dataclass
class S:
    step: jax.Array
    total: jax.Array

class Data:
    def __init__(self): self.next = 1
    def __iter__(self): return self
    def __next__(self):
        self.next += 1
        return self.next - 1
    def get_state(self): return {"next": self.next}
    def set_state(self, s): self.next = s["next"]

def main(argv):
    F = flags.FLAGS
    config = ml_collections.ConfigDict({"log_every": 1, "tensorboard": False,
        "model": {"width": F.width},
        "checkpoint": {"every_steps": 100, "keep": 2, "async_save": False}})
    run = run_lib.TrainingRun(F.workdir, config)
    rep = mesh_lib.replicated(mesh_lib.make_mesh())
    init = lambda: jax.device_put(S(jnp.int32(0), jnp.int32(0)), rep)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                            jax.eval_shape(init))
    state, data = run.restore_or_init(abstract, init, Data())
    print("started", flush=True)
    step = lambda s, x: (S(s.step + 1, s.total + x), {"loss": (s.total + x).astype(float)})
    result = run.train(state, data, step, total_steps=40, steps_per_epoch=5,
                       step_sleep_s=F.sleep)
    run.write_summary({"step": result.step, "status": result.status,
                       "total": int(result.state.total)})
    print(result.status, result.step, int(result.state.total), flush=True)

cli.run(main)
"""


def _tool(script, workdir, *args):
    return subprocess.Popen(
        [sys.executable, str(script), f"--workdir={workdir}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


@pytest.mark.slow
def test_two_runs_in_one_workdir_and_ctrl_c_as_a_person_meets_them(tmp_path):
    script = tmp_path / "toy_train.py"
    script.write_text(_TOOL)
    work = tmp_path / "run"
    first = _tool(script, work, "--sleep=0.2")
    assert first.stdout.readline().strip() == "started"
    second = _tool(script, work)
    _, err = second.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert second.returncode == 1 and len(lines) == 1, err
    assert lines[0] == (
        f"error: another training run (pid {first.pid}) on host {socket.gethostname()} "
        f"is writing into {work}; wait for it to finish or choose another output folder"
    )
    time.sleep(0.5)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0 and "Traceback" not in err, err
    step = int(out.split()[-2])
    assert out.split()[-3] == "preempted" and 1 <= step < 40
    (warning,) = [x for x in err.splitlines() if "checkpoint written" in x]
    assert warning.endswith(
        f"SIGINT: checkpoint written at step {step}, exiting; re-run the same command to resume"
    )
    other = _tool(script, work, "--width=16")  # another model into the same workdir
    _, err = other.communicate(timeout=120)
    assert other.returncode == 2 and err.strip() == (
        f"error: {work} holds a run with another config (differs in model.width); "
        "re-run with its config.json, or choose a new workdir"
    )
    again = _tool(script, work)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert out.split()[-3:] == ["done", "40", str(40 * 41 // 2)]
