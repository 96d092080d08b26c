"""runtime.metrics_log, runtime.run.Preemption, runtime.json_file: the metrics log, its
lagged non-finite check, preemption, the JSON writer."""

import json
import math
import os
import signal

import jax.numpy as jnp
import pytest

from dinolg_jax.runtime import json_file, metrics_log
from dinolg_jax.runtime import run as run_lib


def test_write_json_is_atomic_sorted_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "summary.json"
    json_file.write_json(path, {"b": 1, "a": tmp_path})
    assert path.read_text() == '{\n "a": "' + str(tmp_path) + '",\n "b": 1\n}\n'
    json_file.write_json(path, {"c": [1, 2]})
    assert json.loads(path.read_text()) == {"c": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_metrics_log_lines_window_mean_first_loss_and_extra(tmp_path):
    log = metrics_log.MetricsLog(tmp_path, 4, steps_per_epoch=2)
    for step, loss in ((1, 3.0), (2, 1.0)):
        log.add(step, {"loss": jnp.float32(loss), "lr": jnp.float32(0.5)})
    log.extra["online"] = 0.75
    log.flush(write=True)
    log.add(3, {"loss": jnp.float32(2.0), "lr": jnp.float32(0.25)})
    log.flush(write=False)  # fetched and checked, no line
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert list(line)[:2] == ["step", "epoch"] and list(line)[-2:] == ["steps_per_s", "eta_s"]
    assert (line["step"], line["epoch"], line["loss"], line["lr"]) == (2, 1.0, 1.0, 0.5)
    assert line["loss_window_mean"] == 2.0 and line["online"] == 0.75
    assert log.first_loss == 3.0
    assert log.last == {"loss": 2.0, "lr": 0.25, "loss_window_mean": 2.0}


def test_metrics_log_checks_each_loss_one_step_behind(tmp_path):
    log = metrics_log.MetricsLog(tmp_path, 10, steps_per_epoch=5)
    log.add(1, {"loss": jnp.float32(1.0)})
    log.add(2, {"loss": jnp.float32(math.nan)})  # step 1 checked: fine
    with pytest.raises(metrics_log.NonFiniteLossError, match=r"\(nan\) at step 2"):
        log.add(3, {"loss": jnp.float32(1.0)})
    log = metrics_log.MetricsLog(tmp_path, 10, steps_per_epoch=5)
    log.add(1, {"loss": jnp.float32(math.inf)})
    with pytest.raises(metrics_log.NonFiniteLossError, match="at step 1"):
        log.check_previous()
    with pytest.raises(metrics_log.NonFiniteLossError, match="at step 1"):
        log.flush(write=True)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_preemption_turns_sigterm_into_a_flag_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with run_lib.Preemption() as preempt:
        assert not preempt.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert preempt.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) == before
