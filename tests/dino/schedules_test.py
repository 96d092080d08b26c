"""Schedules: endpoints, monotonicity, jnp == numpy, the DINO recipe from a config."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dinolg_jax.dino.schedules import (
    CosineSchedule,
    DinoSchedules,
    LinearWarmupSchedule,
    cosine_schedule,
)


def test_cosine_endpoints_and_midpoint():
    s = cosine_schedule(1.0, 0.1, total_steps=110, warmup_steps=10, start_warmup=0.2)
    assert s.numpy(0) == pytest.approx(0.2)
    assert s.numpy(5) == pytest.approx(0.6)  # halfway through warmup
    assert s.numpy(10) == pytest.approx(1.0)  # end of warmup = base
    # Cosine over steps 10..109 (99 intervals): halfway (step 59.5) is the mean of the ends.
    assert 0.5 * (s.numpy(59) + s.numpy(60)) == pytest.approx(0.55, abs=1e-3)
    assert s.numpy(109) == pytest.approx(0.1, abs=1e-12)  # last step = final exactly
    assert s.numpy(500) == pytest.approx(0.1)  # clamped after the end
    # Hand value: step 43 -> p = 33/99 = 1/3, cos(pi/3) = 1/2 -> 0.1 + 0.45 * 1.5.
    assert s.numpy(43) == pytest.approx(0.1 + 0.45 * 1.5)


def test_cosine_monotone_and_jnp_matches_numpy():
    s = cosine_schedule(5e-4, 1e-6, total_steps=200, warmup_steps=20)
    steps = np.arange(200)
    v = s.numpy(steps)
    assert np.all(np.diff(v[:21]) > 0) and np.all(np.diff(v[20:]) < 0)
    vj = jax.jit(jax.vmap(s))(jnp.arange(200))
    assert vj.dtype == jnp.float32
    np.testing.assert_allclose(vj, v, rtol=1e-5, atol=1e-10)
    up = cosine_schedule(0.996, 1.0, total_steps=50)  # increasing, no warmup
    vu = up.numpy(np.arange(50))
    assert vu[0] == pytest.approx(0.996) and vu[-1] == pytest.approx(1.0)
    assert np.all(np.diff(vu) > 0)


def test_linear_warmup_then_constant():
    t = LinearWarmupSchedule(0.04, 0.07, warmup_steps=30)
    assert t.numpy(0) == pytest.approx(0.04)
    assert t.numpy(15) == pytest.approx(0.055)
    assert t.numpy(30) == pytest.approx(0.07) and t.numpy(1000) == pytest.approx(0.07)
    assert float(jax.jit(t)(jnp.int32(10))) == pytest.approx(0.05)
    assert LinearWarmupSchedule(0.04, 0.07, 0).numpy(0) == pytest.approx(0.07)


def test_dino_schedules_from_config():
    config = ml_collections.ConfigDict()
    config.num_epochs = 4
    config.data = ml_collections.ConfigDict({"batch_size": 512})
    config.optim = ml_collections.ConfigDict(
        {"lr": 5e-4, "min_lr": 1e-6, "warmup_epochs": 1, "freeze_last_layer": 1,
         "weight_decay": 0.04, "weight_decay_end": 0.4}
    )  # fmt: skip
    config.dino = ml_collections.ConfigDict(
        {"warmup_teacher_temp_epochs": 2, "momentum_teacher": 0.996, "warmup_teacher_temp": 0.04,
         "teacher_temp": 0.07}
    )  # fmt: skip
    sched = DinoSchedules.from_config(config, steps_per_epoch=10)
    assert sched.total_steps == 40 and sched.freeze_last_layer_steps == 10
    first, warm, last = sched.values(0), sched.values(10), sched.values(39)
    assert first["lr"] == 0.0
    assert warm["lr"] == pytest.approx(5e-4 * 512 / 256)  # linear scaling rule
    assert last["lr"] == pytest.approx(1e-6)
    assert first["weight_decay"] == pytest.approx(0.04)
    assert last["weight_decay"] == pytest.approx(0.4)
    assert first["teacher_momentum"] == pytest.approx(0.996)
    assert last["teacher_momentum"] == pytest.approx(1.0)
    assert first["teacher_temp"] == pytest.approx(0.04)
    assert sched.values(20)["teacher_temp"] == pytest.approx(0.07)
    assert sched.values(10)["teacher_temp"] == pytest.approx(0.055)
    assert float(jax.jit(sched.lr)(10)) == pytest.approx(1e-3, rel=1e-6)
    # Every value is a cosine: weight decay halfway is the mean of its ends.
    mid = 0.5 * (sched.values(19)["weight_decay"] + sched.values(20)["weight_decay"])
    assert mid == pytest.approx(0.22, abs=1e-3)
    assert math.isclose(sched.weight_decay.numpy(39), 0.4)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineSchedule(1.0, 0.0, total_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="total_steps"):
        CosineSchedule(1.0, 0.0, total_steps=0)
    with pytest.raises(KeyError, match="num_epochs"):
        DinoSchedules.from_config(ml_collections.ConfigDict({"data": {}}), 10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        DinoSchedules.create(epochs=1, steps_per_epoch=0, global_batch=8)


def test_short_run_keeps_teacher_temp_slope():
    sched = DinoSchedules.create(
        epochs=2,
        steps_per_epoch=5,
        global_batch=256,
        warmup_epochs=10,
        warmup_teacher_temp_epochs=30,
    )
    assert sched.lr.warmup_steps == 10 and sched.values(9)["lr"] == pytest.approx(4.5e-4)
    assert sched.values(9)["teacher_temp"] == pytest.approx(0.04 + 0.03 * 9 / 150)
