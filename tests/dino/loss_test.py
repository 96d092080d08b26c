"""DINO loss and centre: hand-computed cases, a loop reference and invariances."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinolg_jax.dino.loss import dino_loss, update_center


def _loop_reference(student, teacher, center, student_temp, teacher_temp):
    """Explicit loops over crop pairs, samples and classes (float64, math.exp/log)."""
    n_crops, b, k = student.shape
    total, pairs = 0.0, 0
    for i in range(teacher.shape[0]):
        for j in range(n_crops):
            if i == j:
                continue
            ce = 0.0
            for n in range(b):
                tz = [(teacher[i, n, c] - center[c]) / teacher_temp for c in range(k)]
                tm = max(tz)
                tsum = sum(math.exp(z - tm) for z in tz)
                sz = [student[j, n, c] / student_temp for c in range(k)]
                sm = max(sz)
                log_norm = sm + math.log(sum(math.exp(z - sm) for z in sz))
                for c in range(k):
                    ce -= math.exp(tz[c] - tm) / tsum * (sz[c] - log_norm)
            total += ce / b
            pairs += 1
    return total / pairs


def test_hand_case_two_globals_one_local():
    # K = 3, B = 1. Teacher temp 1 and student temp 1 so every number is easy to check.
    student = np.array([[[0.0, 0.0, 0.0]], [[math.log(2), 0.0, 0.0]], [[0.0, 0.0, math.log(6)]]])
    teacher = np.array([[[0.0, 0.0, 0.0]], [[2.0, 1.0, 1.0]]])
    center = np.array([1.0, 0.0, 0.0])
    # Teacher probs: crop 0: centred (-1, 0, 0) -> (1, e, e) / (1 + 2e);
    #                crop 1: centred (1, 1, 1) -> uniform 1/3.
    # Student log-probs: crop 0: -log 3 each; crop 1: log(2/4), log(1/4), log(1/4);
    #                    crop 2: log(1/8), log(1/8), log(6/8).
    e = math.e
    q0 = np.array([1.0, e, e]) / (1 + 2 * e)
    q1 = np.full(3, 1 / 3)
    ls1 = np.log([0.5, 0.25, 0.25])
    ls2 = np.log([1 / 8, 1 / 8, 6 / 8])
    expected = (
        -(q0 @ ls1)
        - (q0 @ ls2)  # teacher crop 0 vs student crops 1, 2
        + math.log(3)
        - (q1 @ ls2)  # teacher crop 1 vs student crops 0, 2
    ) / 4
    got = dino_loss(
        jnp.asarray(student, jnp.float32),
        jnp.asarray(teacher, jnp.float32),
        jnp.asarray(center, jnp.float32),
        student_temp=1.0,
        teacher_temp=1.0,
    )
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    ref = _loop_reference(student, teacher, center, 1.0, 1.0)
    np.testing.assert_allclose(ref, expected, rtol=1e-12)


def test_uniform_logits_give_log_k():
    k = 5
    got = dino_loss(jnp.zeros((4, 3, k)), jnp.ones((2, 3, k)), jnp.zeros(k), teacher_temp=0.04)
    np.testing.assert_allclose(float(got), math.log(k), rtol=1e-6)


def test_random_case_matches_loop_reference_and_invariances():
    rng = np.random.default_rng(0)
    student = rng.standard_normal((5, 4, 7))  # 2 global + 3 local crops
    teacher = rng.standard_normal((2, 4, 7))
    center = rng.standard_normal(7) * 0.1
    f = jax.jit(lambda s, t, c: dino_loss(s, t, c, student_temp=0.1, teacher_temp=0.07))
    base = float(f(student, teacher, center))
    np.testing.assert_allclose(base, _loop_reference(student, teacher, center, 0.1, 0.07), 1e-5)
    shift = rng.standard_normal((5, 4, 1)) * 3
    assert f(student + shift, teacher, center) == pytest.approx(base, rel=1e-5)
    assert f(student, teacher + 2.0, center + 2.0) == pytest.approx(base, rel=1e-5)
    assert f(student, teacher, center + 1.5) == pytest.approx(base, rel=1e-5)
    perm = rng.permutation(7)
    assert f(student[..., perm], teacher[..., perm], center[perm]) == pytest.approx(base, 1e-5)
    local_perm = [0, 1, 4, 2, 3]
    assert f(student[local_perm], teacher, center) == pytest.approx(base, rel=1e-5)
    assert f(student[[1, 0, 2, 3, 4]], teacher[::-1], center) == pytest.approx(base, rel=1e-5)
    per_sample = [float(f(student[:, n : n + 1], teacher[:, n : n + 1], center)) for n in range(4)]
    np.testing.assert_allclose(np.mean(per_sample), base, rtol=1e-5)


def test_float32_from_bf16_and_no_teacher_gradient():
    rng = np.random.default_rng(2)
    s = jnp.asarray(rng.standard_normal((4, 2, 6)), jnp.bfloat16)
    t = jnp.asarray(rng.standard_normal((2, 2, 6)), jnp.bfloat16)
    c = jnp.zeros(6)
    loss = dino_loss(s, t, c, teacher_temp=0.05)
    assert loss.dtype == jnp.float32
    ref = _loop_reference(
        np.asarray(s, np.float64), np.asarray(t, np.float64), np.zeros(6), 0.1, 0.05
    )
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    grads = jax.jit(jax.grad(lambda s, t: dino_loss(s, t, c, teacher_temp=0.05), (0, 1)))
    g_s, g_t = grads(s.astype(jnp.float32), t.astype(jnp.float32))
    np.testing.assert_array_equal(g_t, 0.0)
    assert np.abs(np.asarray(g_s)).max() > 0


def test_update_center_exact():
    center = jnp.asarray([1.0, 2.0, 3.0])
    teacher = jnp.asarray([[[0.0, 4.0, 8.0], [2.0, 0.0, 0.0]], [[4.0, 4.0, 4.0], [2.0, 0.0, 4.0]]])
    # batch mean over 2 globals x 2 samples: (2, 2, 4)
    new = update_center(center, teacher, momentum=0.9)
    np.testing.assert_allclose(new, [0.9 * 1 + 0.1 * 2, 0.9 * 2 + 0.1 * 2, 0.9 * 3 + 0.1 * 4])
    assert new.dtype == jnp.float32
    np.testing.assert_array_equal(update_center(center, teacher, momentum=0.0), [2.0, 2.0, 4.0])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="center"):
        dino_loss(jnp.zeros((2, 1, 3)), jnp.zeros((1, 1, 3)), jnp.zeros(4), teacher_temp=0.1)
    with pytest.raises(ValueError, match="exceeds"):
        dino_loss(jnp.zeros((1, 1, 3)), jnp.zeros((2, 1, 3)), jnp.zeros(3), teacher_temp=0.1)
    with pytest.raises(ValueError, match="pair"):
        dino_loss(jnp.zeros((1, 1, 3)), jnp.zeros((1, 1, 3)), jnp.zeros(3), teacher_temp=0.1)
    with pytest.raises(ValueError, match="batch"):
        dino_loss(jnp.zeros((3, 2, 3)), jnp.zeros((2, 1, 3)), jnp.zeros(3), teacher_temp=0.1)
    with pytest.raises(ValueError, match="teacher_out"):
        update_center(jnp.zeros(3), jnp.zeros((2, 4)))


# ---------------------------------------------------------------- collapse monitors


def _stats(teacher, center=None, temp=1.0, **kw):
    from dinolg_jax.dino.loss import teacher_collapse_stats

    t = jnp.asarray(teacher, jnp.float32)
    c = jnp.zeros(t.shape[-1]) if center is None else jnp.asarray(center, jnp.float32)
    return {k: float(v) for k, v in teacher_collapse_stats(t, c, teacher_temp=temp, **kw).items()}


def test_collapse_stats_uniform_collapse_is_ln_k_twice_and_zero_kl():
    s = _stats(np.zeros((2, 5, 16)))
    assert s["teacher_entropy"] == pytest.approx(math.log(16), abs=1e-5)
    assert s["teacher_batch_entropy"] == pytest.approx(math.log(16), abs=1e-5)
    assert s["teacher_kl"] == pytest.approx(0.0, abs=1e-5)


def test_collapse_stats_one_prototype_is_zero_entropy():
    t = np.zeros((2, 4, 8))
    t[..., 3] = 50.0  # every sample on prototype 3
    s = _stats(t)
    assert s["teacher_entropy"] == pytest.approx(0.0, abs=1e-5)
    assert s["teacher_batch_entropy"] == pytest.approx(0.0, abs=1e-5)


def test_collapse_stats_hand_computed_two_point_distributions():
    # K = 2, temperature 1, centre 0. Sample 0: logits (0, ln 3) -> p = (1/4, 3/4);
    # sample 1: logits (ln 3, 0) -> p = (3/4, 1/4). Batch mean = (1/2, 1/2).
    t = np.array([[[0.0, math.log(3)], [math.log(3), 0.0]]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # 0.5623 nats
    s = _stats(t)
    assert s["teacher_entropy"] == pytest.approx(h, abs=1e-6)
    assert s["teacher_batch_entropy"] == pytest.approx(math.log(2), abs=1e-6)
    # mean KL(p_i || p_bar) computed directly
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert s["teacher_kl"] == pytest.approx(kl, abs=1e-6)
    assert kl == pytest.approx(math.log(2) - h, abs=1e-12)


def test_collapse_stats_use_the_centre_and_temperature():
    # Centre (0, ln 3) and temperature 2 on logits (0, 2 ln 3): (0, ln 3) / 2 ... -> p ∝ (1, sqrt 3)
    t = np.array([[[0.0, 2 * math.log(3)]]])
    p1 = math.sqrt(3) / (1 + math.sqrt(3))
    h = -(p1 * math.log(p1) + (1 - p1) * math.log(1 - p1))
    s = _stats(t, center=[0.0, math.log(3)], temp=2.0)
    assert s["teacher_entropy"] == pytest.approx(h, abs=1e-6)
    assert s["teacher_kl"] == pytest.approx(0.0, abs=1e-6)  # one sample: p_bar = p


def test_loss_splits_into_teacher_entropy_plus_kl():
    rng = np.random.default_rng(3)
    student = rng.normal(size=(4, 3, 6)).astype(np.float32)
    teacher = rng.normal(size=(2, 3, 6)).astype(np.float32)
    center = rng.normal(size=6).astype(np.float32) * 0.1
    loss = float(dino_loss(student, teacher, center, student_temp=0.5, teacher_temp=0.3))
    s = _stats(teacher, center, temp=0.3)
    # KL(p_t || p_s) over the same pairs, in float64 numpy
    zt = (teacher.astype(np.float64) - center) / 0.3
    pt = np.exp(zt - zt.max(-1, keepdims=True))
    pt /= pt.sum(-1, keepdims=True)
    zs = student.astype(np.float64) / 0.5
    ls = zs - zs.max(-1, keepdims=True)
    ls -= np.log(np.exp(ls).sum(-1, keepdims=True))
    kls = [
        np.mean(np.sum(pt[i] * (np.log(pt[i]) - ls[j]), -1))
        for i in range(2)
        for j in range(4)
        if i != j
    ]
    assert loss - s["teacher_entropy"] == pytest.approx(float(np.mean(kls)), abs=1e-5)


# ---------------------------------------------------------------- Sinkhorn-Knopp centring


def _sinkhorn_reference(logits, temp, iters):
    """DINOv2's procedure in float64 numpy (probability space, K x B as written there)."""
    q = np.exp(np.asarray(logits, np.float64) / temp).T  # [K, B]
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    q *= b
    return q.T


def test_sinkhorn_matches_reference_and_balances_prototypes():
    from dinolg_jax.dino.loss import sinkhorn_knopp

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 5)).astype(np.float32)
    for iters in (1, 3):
        got = np.asarray(sinkhorn_knopp(jnp.asarray(logits), teacher_temp=0.5, n_iters=iters))
        np.testing.assert_allclose(got, _sinkhorn_reference(logits, 0.5, iters), atol=2e-6)
    many = np.asarray(sinkhorn_knopp(jnp.asarray(logits), teacher_temp=0.5, n_iters=200))
    np.testing.assert_allclose(many.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(many.sum(0), 12 / 5, atol=1e-4)  # equal mass per prototype


def test_dino_loss_with_sinkhorn_centring_matches_reference():
    rng = np.random.default_rng(1)
    student = rng.normal(size=(3, 4, 5)).astype(np.float32)
    teacher = rng.normal(size=(2, 4, 5)).astype(np.float32)
    got = float(
        dino_loss(
            student, teacher, np.zeros(5, np.float32), student_temp=0.2, teacher_temp=0.4,
            centering="sinkhorn", sinkhorn_iters=3,
        )
    )  # fmt: skip
    q = _sinkhorn_reference(teacher.reshape(8, 5), 0.4, 3).reshape(2, 4, 5)
    zs = student.astype(np.float64) / 0.2
    ls = zs - np.log(np.exp(zs).sum(-1, keepdims=True))
    ce = [np.mean(-np.sum(q[i] * ls[j], -1)) for i in range(2) for j in range(3) if i != j]
    assert got == pytest.approx(float(np.mean(ce)), abs=1e-5)
    with pytest.raises(ValueError, match="centering"):
        dino_loss(student, teacher, np.zeros(5), teacher_temp=0.4, centering="mean")


def test_koleo_hand_computed():
    from dinolg_jax.dino.loss import koleo_loss

    # Unit vectors at 0, 90 and 180 degrees (scaled rows: normalised first): every
    # nearest neighbour is at distance sqrt(2).
    x = jnp.asarray([[2.0, 0.0], [0.0, 0.5], [-3.0, 0.0]])
    assert float(koleo_loss(x)) == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    # Add a point at 45 degrees: distances to neighbours 2 sin(22.5 deg) for rows 0, 1, 3;
    # row 2 (180 deg) keeps sqrt(2) to row 1.
    y = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    near = 2 * math.sin(math.radians(22.5))
    expected = -(3 * math.log(near) + math.log(math.sqrt(2))) / 4
    assert float(koleo_loss(y)) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError):
        koleo_loss(jnp.ones((1, 3)))
