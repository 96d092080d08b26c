"""runtime.run: the training-run skeleton on a toy run whose every number is known.

The toy state counts steps and sums the batches it saw (``total``); the data iterator
yields 1, 2, 3, ... and restores from ``{"next": k}``. After n steps from a fresh start,
``total`` is n (n + 1) / 2 whatever interruptions happened, if the skeleton restores the
state and the iterator consistently.
"""

import json

import flax
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from dinolg_jax.runtime import checkpoint as ckpt_lib
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
