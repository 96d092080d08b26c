"""The DINO self-distillation loss and the teacher-output centre.

For global crop ``i`` (teacher) and any crop ``j != i`` (student), with
``P_t = softmax((t_i - c) / T_t)`` and ``log P_s = log_softmax(s_j / T_s)``::

    loss = mean over pairs (i, j), i < n_global, j < n_crops, j != i, of
           mean over the batch of  -sum_k P_t[k] log P_s[k]

(Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
Eq. 1 / Algorithm 1). Everything is computed in float32 whatever the input dtype; the
teacher side should be passed through ``jax.lax.stop_gradient`` by the caller (done here
too, so the loss never sends gradients into the teacher).

Centring of the teacher (``centering``): ``"ema"`` is DINO's, ``P_t = softmax((t - c) /
T_t)`` with the running centre below; ``"sinkhorn"`` is the Sinkhorn-Knopp centring of
SwAV / DINOv2 / iBOT: ``P_t`` is the doubly normalised ``exp(t / T_t)`` over all global
crops of the batch (every prototype gets the same total mass, every sample sums to 1),
``sinkhorn_iters`` alternations, computed in log space; the centre is then not used.

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


CENTERINGS = ("ema", "sinkhorn")


def sinkhorn_knopp(
    logits: jnp.ndarray, *, teacher_temp: float | jnp.ndarray, n_iters: int = 3
) -> jnp.ndarray:
    """Sinkhorn-Knopp normalisation of teacher logits (DINOv2's ``sinkhorn_knopp_teacher``).

    Starting from ``Q = exp(logits / T)`` over the N rows (samples) and K columns
    (prototypes), alternately makes every column sum to 1/K and every row to 1/N, then
    scales rows to sum to 1. Log-space arithmetic, float32.

    Args:
      logits: [N, K] teacher logits (all global crops of the batch).
      teacher_temp: temperature T.
      n_iters: number of (column, row) alternations.

    Returns:
      float32 [N, K]: per-row probabilities.
    """
    n, k = logits.shape
    log_q = jax.lax.stop_gradient(logits.astype(jnp.float32)) / teacher_temp
    for _ in range(int(n_iters)):
        log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - jnp.log(float(k))
        log_q = log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - jnp.log(float(n))
    return jax.nn.softmax(log_q, axis=1)


def teacher_probs(
    teacher_out: jnp.ndarray,
    center: jnp.ndarray,
    *,
    teacher_temp: float | jnp.ndarray,
    centering: str = "ema",
    sinkhorn_iters: int = 3,
) -> jnp.ndarray:
    """The teacher's centred, sharpened distribution ``P_t`` (see the module docstring).

    Args:
      teacher_out: [n_global, B, K] teacher logits.
      center: [K] running centre (used by ``"ema"`` only).
      teacher_temp: teacher temperature.
      centering: ``"ema"`` or ``"sinkhorn"``.
      sinkhorn_iters: Sinkhorn-Knopp alternations.

    Returns:
      float32 [n_global, B, K], each row summing to 1.
    """
    if centering not in CENTERINGS:
        raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
    t = jax.lax.stop_gradient(teacher_out.astype(jnp.float32))
    if centering == "sinkhorn":
        g, b, k = t.shape
        q = sinkhorn_knopp(t.reshape(g * b, k), teacher_temp=teacher_temp, n_iters=sinkhorn_iters)
        return q.reshape(g, b, k)
    c = jax.lax.stop_gradient(center.astype(jnp.float32)).reshape(-1)
    return jax.nn.softmax((t - c) / teacher_temp, axis=-1)


def dino_loss(
    student_out: jnp.ndarray,
    teacher_out: jnp.ndarray,
    center: jnp.ndarray,
    *,
    student_temp: float | jnp.ndarray = 0.1,
    teacher_temp: float | jnp.ndarray,
    centering: str = "ema",
    sinkhorn_iters: int = 3,
) -> jnp.ndarray:
    """DINO cross-entropy between teacher and student crops.

    Args:
      student_out: [n_crops, B, K] student logits, the global crops first.
      teacher_out: [n_global, B, K] teacher logits of the global crops.
      center: [K] running centre of the teacher logits.
      student_temp: student softmax temperature.
      teacher_temp: teacher softmax temperature (may be a traced schedule value).
      centering: ``"ema"`` (DINO) or ``"sinkhorn"`` (Sinkhorn-Knopp, DINOv2).
      sinkhorn_iters: Sinkhorn-Knopp alternations.

    Returns:
      float32 scalar: the mean over the ``n_global * (n_crops - 1)`` pairs of the
      batch-mean cross-entropy, in nats.

    Raises:
      ValueError: on inconsistent shapes or when no pair exists.
    """
    _check(student_out, teacher_out, center)
    n_crops, b, _ = student_out.shape
    n_global = teacher_out.shape[0]
    p_t = teacher_probs(
        teacher_out,
        center,
        teacher_temp=teacher_temp,
        centering=centering,
        sinkhorn_iters=sinkhorn_iters,
    )  # [G, B, K]
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


def _entropy(p: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """Shannon entropy in nats of probabilities ``p`` along ``axis`` (0 log 0 = 0)."""
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=axis)


def teacher_collapse_stats(
    teacher_out: jnp.ndarray,
    center: jnp.ndarray,
    *,
    teacher_temp: float | jnp.ndarray,
    centering: str = "ema",
    sinkhorn_iters: int = 3,
) -> dict[str, jnp.ndarray]:
    """DINO's collapse indicators of the centred, sharpened teacher distribution.

    With ``p_i = softmax((t_i - c) / T_t)`` for every global crop of every sample ``i``
    and ``p_bar`` their mean (Caron et al. 2021, section 5.3 and Fig. 7)::

        teacher_entropy        mean_i H(p_i)
        teacher_batch_entropy  H(p_bar)
        teacher_kl             mean_i KL(p_i || p_bar) = H(p_bar) - mean_i H(p_i)

    Uniform collapse: both entropies near ln K, KL near 0. Collapse onto one prototype:
    both entropies near 0, KL near 0. A learning run has a low per-sample entropy, a
    high batch entropy and so a KL of several nats.

    Args:
      teacher_out: [n_global, B, K] teacher logits.
      center: [K] the centre used by the loss.
      teacher_temp: teacher temperature.
      centering, sinkhorn_iters: as in :func:`dino_loss` (the distribution the loss uses).

    Returns:
      dict of float32 scalars (nats): the three quantities above.
    """
    p = teacher_probs(
        teacher_out,
        center,
        teacher_temp=teacher_temp,
        centering=centering,
        sinkhorn_iters=sinkhorn_iters,
    )  # [G, B, K]
    h = jnp.mean(_entropy(p))
    h_bar = _entropy(jnp.mean(p, axis=(0, 1)))
    return {"teacher_entropy": h, "teacher_batch_entropy": h_bar, "teacher_kl": h_bar - h}


def koleo_loss(features: jnp.ndarray, eps: float = 1e-8) -> jnp.ndarray:
    """KoLeo regulariser (Sablayrolles et al. 2019; DINOv2): spreads features in a batch.

    ``-mean_i log(min_{j != i} ||x_i - x_j|| + eps)`` of the L2-normalised rows: small when
    every feature's nearest neighbour in the batch is far, large when two coincide. Under
    ``jax.jit`` with the batch sharded, the pairwise distances span the global batch.

    Args:
      features: [N, D] features (N >= 2), e.g. the student CLS of one global crop.
      eps: added to the distances inside the log.

    Returns:
      float32 scalar.
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"koleo_loss needs [N >= 2, D] features, got {features.shape}")
    x = features.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    sim = jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)
    sim = jnp.where(jnp.eye(x.shape[0], dtype=bool), -jnp.inf, sim)
    nearest = jnp.max(sim, axis=1)  # cosine of each row's nearest neighbour
    dist = jnp.sqrt(jnp.maximum(2.0 - 2.0 * nearest, 0.0))  # unit vectors: |a-b|^2 = 2 - 2cos
    return -jnp.mean(jnp.log(dist + eps))
