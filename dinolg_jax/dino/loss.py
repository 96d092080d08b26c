"""The DINO self-distillation loss and the teacher-output centre.

For global crop ``i`` (teacher) and any crop ``j != i`` (student), with
``P_t = softmax((t_i - c) / T_t)`` and ``log P_s = log_softmax(s_j / T_s)``::

    loss = mean over pairs (i, j), i < n_global, j < n_crops, j != i, of
           mean over the batch of  -sum_k P_t[k] log P_s[k]

(Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
Eq. 1 / Algorithm 1). Everything is computed in float32 whatever the input dtype; the
teacher side should be passed through ``jax.lax.stop_gradient`` by the caller (done here
too, so the loss never sends gradients into the teacher).

Centre: ``c <- m c + (1 - m) mean(t)``, the mean over every global crop of every sample.
Under ``jax.jit`` with a batch sharded over a mesh, ``jnp.mean`` over the batch axis is
the global mean (XLA inserts the all-reduce), which is what official DINO gets with its
explicit ``all_reduce``; no collective has to be written here. Inside ``shard_map`` the
caller must ``pmean`` the result itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check(student_out: jnp.ndarray, teacher_out: jnp.ndarray, center: jnp.ndarray) -> None:
    if student_out.ndim != 3 or teacher_out.ndim != 3:
        raise ValueError(
            "student_out must be [n_crops, B, K] and teacher_out [n_global, B, K]; got "
            f"{student_out.shape} and {teacher_out.shape}"
        )
    n_crops, b, k = student_out.shape
    n_global, bt, kt = teacher_out.shape
    if (bt, kt) != (b, k):
        raise ValueError(f"batch/out dims differ: student {(b, k)} vs teacher {(bt, kt)}")
    if n_global > n_crops:
        raise ValueError(f"n_global={n_global} exceeds n_crops={n_crops} (globals come first)")
    if n_global * n_crops - n_global == 0:
        raise ValueError("no (teacher, student) pair with different crops: need n_crops >= 2")
    if center.shape not in ((k,), (1, k)):
        raise ValueError(f"center must be [K] = [{k}], got {center.shape}")


def dino_loss(
    student_out: jnp.ndarray,
    teacher_out: jnp.ndarray,
    center: jnp.ndarray,
    *,
    student_temp: float | jnp.ndarray = 0.1,
    teacher_temp: float | jnp.ndarray,
) -> jnp.ndarray:
    """DINO cross-entropy between teacher and student crops.

    Args:
      student_out: [n_crops, B, K] student logits, the global crops first.
      teacher_out: [n_global, B, K] teacher logits of the global crops.
      center: [K] running centre of the teacher logits.
      student_temp: student softmax temperature.
      teacher_temp: teacher softmax temperature (may be a traced schedule value).

    Returns:
      float32 scalar: the mean over the ``n_global * (n_crops - 1)`` pairs of the
      batch-mean cross-entropy, in nats.

    Raises:
      ValueError: on inconsistent shapes or when no pair exists.
    """
    _check(student_out, teacher_out, center)
    n_crops, b, _ = student_out.shape
    n_global = teacher_out.shape[0]
    t = jax.lax.stop_gradient(teacher_out.astype(jnp.float32))
    c = jax.lax.stop_gradient(center.astype(jnp.float32)).reshape(-1)
    p_t = jax.nn.softmax((t - c) / teacher_temp, axis=-1)  # [G, B, K]
    log_p_s = jax.nn.log_softmax(student_out.astype(jnp.float32) / student_temp, axis=-1)
    # ce[i, j] = batch mean of -sum_k p_t[i] log p_s[j]   # [G, n_crops]
    ce = -jnp.einsum("ibk,jbk->ij", p_t, log_p_s, precision=jax.lax.Precision.HIGHEST) / b
    off_diag = 1.0 - jnp.eye(n_global, n_crops, dtype=jnp.float32)
    return jnp.sum(ce * off_diag) / (n_global * n_crops - n_global)


def update_center(
    center: jnp.ndarray, teacher_out: jnp.ndarray, momentum: float | jnp.ndarray = 0.9
) -> jnp.ndarray:
    """EMA of the teacher logits' mean.

    Args:
      center: [K] current centre.
      teacher_out: [n_global, B, K] teacher logits.
      momentum: EMA momentum ``m``.

    Returns:
      float32 in ``center``'s shape:
      ``m * center + (1 - m) * mean over (n_global, B) of teacher_out``.
    """
    if teacher_out.ndim != 3 or teacher_out.shape[-1] != center.shape[-1]:
        raise ValueError(
            f"teacher_out must be [n_global, B, K] with K = {center.shape[-1]}, "
            f"got {teacher_out.shape}"
        )
    batch_center = jnp.mean(jax.lax.stop_gradient(teacher_out.astype(jnp.float32)), axis=(0, 1))
    c = center.astype(jnp.float32)
    return momentum * c + (1.0 - momentum) * batch_center.reshape(c.shape)
