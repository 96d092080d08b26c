"""The DINO step's semantics against an independent numpy reference (one step, tiny sizes).

Checks what a silent mistake in ``dino/step.py`` would break without failing any shape
check: the loss pairs every teacher (global) crop with every other student crop, the
centre is subtracted from the teacher logits only, the teacher sees only the global
crops, the centre's EMA is over the teacher's global-crop outputs, and the teacher is
``m * teacher + (1 - m) * updated student`` (not the reverse).
"""

import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from dinolg_jax.dino import step as step_lib
from dinolg_jax.phantom.synthetic_crops import synthetic_batch
from dinolg_jax.runtime import mesh as mesh_lib

STUDENT_TEMP = 0.1
CENTER_MOMENTUM = 0.7
TEACHER_MOMENTUM = 0.9


def _config():
    c = common.pretrain_config()
    c.model.variant = "mu/8"
    c.model.attention_impl = "xla"
    c.model.drop_path_rate = 0.0  # so the student's forward pass is deterministic
    c.dino.out_dim = 32
    c.dino.hidden_dim = 16
    c.dino.bottleneck_dim = 8
    c.dino.student_temp = STUDENT_TEMP
    c.dino.center_momentum = CENTER_MOMENTUM
    c.dino.momentum_teacher = TEACHER_MOMENTUM
    c.dino.warmup_teacher_temp = 0.05
    c.dino.teacher_temp = 0.05
    c.optim.lr = 0.5
    c.optim.warmup_epochs = 0.0
    c.optim.freeze_last_layer = 0.0
    c.num_epochs = 1.0
    c.data.batch_size = 8
    c.data.global_size = 16
    c.data.local_size = 8
    c.data.n_local_random = 2
    c.data.n_local_guided = 0
    return c


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_step_matches_numpy_reference():
    config = _config()
    mesh = mesh_lib.make_mesh()
    trainer = step_lib.make_trainer(config, mesh, steps_per_epoch=10)
    state = trainer.init_state()
    # A teacher different from the student and a non-zero centre, so that swapping
    # student and teacher, or centring the wrong side, changes the numbers.
    rng = np.random.default_rng(0)
    teacher = jax.tree.map(
        lambda x: x + 0.02 * rng.standard_normal(x.shape).astype(np.float32), state.teacher
    )
    center = rng.standard_normal(config.dino.out_dim).astype(np.float32) * 0.1
    state = state.replace(teacher=teacher, center=jnp.asarray(center))
    before = jax.tree.map(lambda x: np.asarray(x).copy(), state)
    batch = synthetic_batch(config, mesh, seed=1)
    g, loc = np.asarray(batch["global"]), np.asarray(batch["local"])

    def outputs(params, views):
        out = step_lib._dino_outputs(
            trainer.backbone, trainer.head, params, [jnp.asarray(v) for v in views],
            train=False, rng=None,
        )[0]  # fmt: skip
        return np.asarray(out, np.float64)

    t_out = outputs(before.teacher, [g])  # [2, B, K]: teacher on the global crops only
    s_out = outputs(before.params, [g, loc])  # [4, B, K]: student on every crop
    temp = float(trainer.schedules.teacher_temp.numpy(0))
    pairs = []
    for i in range(t_out.shape[0]):
        p_t = np.exp(_log_softmax((t_out[i] - center) / temp))
        for j in range(s_out.shape[0]):
            if i != j:
                pairs.append(-(p_t * _log_softmax(s_out[j] / STUDENT_TEMP)).sum(-1).mean())
    expected_loss = np.mean(pairs)

    new, metrics = trainer.step(state, batch, trainer.step_key, jnp.asarray(-1, jnp.int32))
    np.testing.assert_allclose(float(metrics["loss"]), expected_loss, rtol=2e-5)
    np.testing.assert_allclose(
        np.asarray(new.center),
        CENTER_MOMENTUM * center + (1 - CENTER_MOMENTUM) * t_out.mean(axis=(0, 1)),
        atol=1e-6,
    )
    m = float(metrics["momentum"])
    assert m == np.float32(TEACHER_MOMENTUM)
    for t_new, t_old, s_new in zip(
        jax.tree.leaves(new.teacher),
        jax.tree.leaves(before.teacher),
        jax.tree.leaves(new.params),
        strict=True,
    ):
        np.testing.assert_allclose(
            np.asarray(t_new), m * t_old + (1 - m) * np.asarray(s_new), atol=1e-6
        )
    # The student did move (lr 0.5 * 8 / 256), so the EMA check above is not vacuous.
    moved = max(
        float(np.abs(np.asarray(a) - b).max())
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(before.params), strict=True)
    )
    assert moved > 1e-3
