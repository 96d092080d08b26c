"""Online evaluation of a pretraining run: kNN and logistic probe on frozen teacher features.

Every ``config.eval_every`` steps the teacher backbone encodes a fixed, cached subset of
whole slices (``config.online_eval``: up to ``max_bank`` slices of the bank split, the
train split by default, and up to ``max_query`` of the query split, val by default), and
two calcified-slice detectors are scored on the query slices by ROC-AUC:

* ``knn_roc_auc``: DINO's weighted k-NN (``eval_knn.py``): cosine similarity of the
  L2-normalised CLS features to the bank, the ``k`` nearest vote with weights
  ``exp(sim / T)`` (k = 20, T = 0.07); the score of a slice is the weighted share of
  calcified neighbours.
* ``probe_roc_auc``: a class-balanced, L2-regularised logistic regression on the
  standardised ``[CLS, mean patch token]`` features of the bank (``steps`` full-batch
  Adam steps in one jitted loop, deterministic), scored on the query slices.

The run's random-initialised encoder is scored the same way once, at step 0, and kept
beside (``init_*``), so every evaluation line says how far above its initialisation the
encoder is (``*_gain``). Subsets are chosen by evenly spaced record indices (a function
of the split alone), images are decoded and resized once, the feature pass is one jitted
function of fixed batch shape.
"""

from __future__ import annotations

import functools
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import pipeline, records
from dinolg_jax.eval.metrics import roc_auc
from dinolg_jax.models.vit import ViT


def knn_scores(
    bank: np.ndarray, bank_labels: np.ndarray, query: np.ndarray, *, k: int, temperature: float
) -> np.ndarray:
    """Weighted k-NN score of the positive class (DINO's ``eval_knn`` vote).

    Args:
      bank: [N, D] features; bank_labels: bool [N]; query: [M, D] features.
      k: neighbours (clipped to N); temperature: vote temperature T.

    Returns:
      float64 [M]: ``sum_j w_j y_j / sum_j w_j`` over the k most cosine-similar bank rows,
      ``w_j = exp(sim_j / T)``.
    """
    b = np.asarray(bank, np.float64)
    q = np.asarray(query, np.float64)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    sim = q @ b.T  # [M, N]
    k = min(int(k), len(b))
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(sim, idx, axis=1)
    w = np.exp((top - top[:, :1]) / temperature)  # shifted by the row max: same ratios
    y = np.asarray(bank_labels, np.float64)[idx]
    return (w * y).sum(1) / w.sum(1)


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_logistic(
    x: jax.Array, y: jax.Array, weights: jax.Array, *, steps: int, lr: float, l2: float
) -> tuple[jax.Array, jax.Array]:
    """Weighted L2 logistic regression by full-batch Adam; x [N, F], y/weights [N]."""
    tx = optax.adam(lr)
    params = (jnp.zeros(x.shape[1], jnp.float32), jnp.zeros((), jnp.float32))

    def loss(p):
        z = x @ p[0] + p[1]
        per = optax.sigmoid_binary_cross_entropy(z, y)
        return jnp.sum(weights * per) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(p[0] ** 2)

    def body(_, carry):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p, _ = jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))
    return p


def logistic_scores(
    train: np.ndarray,
    train_labels: np.ndarray,
    query: np.ndarray,
    *,
    steps: int = 300,
    lr: float = 0.05,
    l2: float = 1e-3,
) -> np.ndarray:
    """Scores of a class-balanced logistic probe fit on ``train``, applied to ``query``.

    Features are standardised with the train rows' mean and std; positives weigh
    n_negative / n_positive.

    Args:
      train: [N, F]; train_labels: bool [N]; query: [M, F].

    Returns:
      float32 [M] logits.
    """
    x = np.asarray(train, np.float32)
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    y = np.asarray(train_labels, bool)
    n_pos = max(int(y.sum()), 1)
    w = np.where(y, (len(y) - n_pos) / n_pos, 1.0).astype(np.float32)
    w_lin, bias = _fit_logistic(
        jnp.asarray((x - mu) / sd), jnp.asarray(y, jnp.float32), jnp.asarray(w),
        steps=int(steps), lr=float(lr), l2=float(l2),
    )  # fmt: skip
    q = (np.asarray(query, np.float32) - mu) / sd
    return q @ np.asarray(w_lin) + float(bias)


def _subset(n: int, limit: int) -> np.ndarray:
    """Evenly spaced record indices: all of them when ``n <= limit``."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(limit)).round().astype(np.int64))


class OnlineEvaluator:
    """The cached slices of one run and the jitted feature pass (module docstring)."""

    def __init__(
        self,
        backbone: ViT,
        manifest: manifest_lib.Manifest,
        data: ml_collections.ConfigDict,
        config: ml_collections.ConfigDict,
    ) -> None:
        """Decodes and resizes the subsets once.

        Args:
          backbone: the pretraining ViT (its ``apply`` with ``train=False`` is used).
          manifest: the run's dataset.
          data: the run's ``config.data`` (``hu_window``, ``global_size``).
          config: ``config.online_eval`` (``configs/common.py:pretrain_config``).

        Raises:
          ValueError: a split is empty, or the bank or the query subset lacks a class.
        """
        self.backbone, self.config = backbone, config
        self.size = int(data.global_size)
        self.images: dict[str, np.ndarray] = {}
        self.labels: dict[str, np.ndarray] = {}
        for role, split, limit in (
            ("bank", config.bank_split, config.max_bank),
            ("query", config.query_split, config.max_query),
        ):
            n = manifest.num_records(split)
            if n == 0:
                raise ValueError(f"online eval: split {split!r} has no records")
            paths = manifest.shard_paths(split)
            first = grain.sources.ArrayRecordDataSource(paths)[0]
            shape = records.decode(first, fields=("image",))["image"].shape
            op = pipeline.SliceExample(paths, data.hu_window, self.size, tuple(shape))
            rows = [op.map(int(i)) for i in _subset(n, int(limit))]
            self.images[role] = np.stack([r["image"] for r in rows]).astype(np.float32)
            self.labels[role] = np.array([bool(r["has_calcium"]) for r in rows])
            if self.labels[role].all() or not self.labels[role].any():
                raise ValueError(
                    f"online eval: the {role} subset of split {split!r} has one class only"
                )
        bs = int(config.batch_size)

        def features(params: Any, x: jax.Array) -> jax.Array:
            cls, aux = backbone.apply({"params": params}, x, train=False)
            patches = aux["tokens"][:, 1:].astype(jnp.float32).mean(axis=1)
            return jnp.concatenate([cls.astype(jnp.float32), patches], axis=-1)

        self._features = jax.jit(features)
        self._batch = bs

    def features(self, params: Any, role: str) -> np.ndarray:
        """[N, 2D] float32 ``[CLS, mean patch]`` of the cached ``role`` slices."""
        x = self.images[role]
        bs = self._batch
        out = []
        for start in range(0, len(x), bs):
            chunk = x[start : start + bs]
            pad = bs - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            f = np.asarray(jax.device_get(self._features(params, chunk)))
            out.append(f[: bs - pad])
        return np.concatenate(out)

    def evaluate(self, params: Any) -> dict[str, float]:
        """ROC-AUC of the kNN and of the logistic probe on the query slices.

        Args:
          params: backbone parameters (e.g. the teacher's ``["backbone"]``).

        Returns:
          ``{"knn_roc_auc", "probe_roc_auc"}``.
        """
        c = self.config
        bank, query = self.features(params, "bank"), self.features(params, "query")
        d = bank.shape[1] // 2
        knn = knn_scores(
            bank[:, :d], self.labels["bank"], query[:, :d], k=c.k, temperature=c.temperature
        )
        probe = logistic_scores(
            bank, self.labels["bank"], query, steps=c.probe_steps, lr=c.probe_lr, l2=c.probe_l2
        )
        y = self.labels["query"]
        return {"knn_roc_auc": float(roc_auc(knn, y)), "probe_roc_auc": float(roc_auc(probe, y))}
