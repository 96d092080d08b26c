"""The calcified-slice probe on the frozen DINO-LG encoder (the paper's Fig. 5 and Fig. 6).

1. Features of the train, val and test splits, extracted once by a jitted pass sharded over
   the mesh and cached (``eval/features.py``).
2. A probe from ``models.probes.PROBES`` (``linear`` or ``transformer``) trained on the
   train features with a class-weighted binary cross-entropy: positives weigh
   ``pos_weight`` (``"balanced"``: n_negative / n_positive, ~6-9 for 10-15 % calcified
   slices), so both classes weigh the same in total.
3. The decision threshold is the largest score threshold whose recall on **val** is at
   least ``eval.target_recall`` (default 0.95: a missed calcified slice is never
   segmented), from ``eval.metrics.threshold_for_recall``.
4. Val and test: TP/TN/FP/FN, precision, recall, specificity, F1, accuracy at that
   threshold and ROC-AUC; for test, 95 % bootstrap intervals of ROC-AUC and F1 over
   patients (``eval.metrics.binary_intervals``, a study's slices drawn together); a
   confusion-matrix PNG of test, the ROC of val and test with the threshold marked
   (``roc_val.png``, ``roc_test.png``: ``eval.roc_plot``); ``summary.json``, which also
   records the pixel spacing and slice size the features were taken at
   (``data.split_grid``), the grid inference resamples a study to.

5. With ``patch_probe.enabled``, the dense probe (``eval/patch_probe.py``) on the same
   cached tokens: per patch "does it hold calcium?", from the pixel labels; a measurement in
   ``summary["patch"]``, not part of the gate.

A re-run into the same workdir retrains from the cached features (same config, same
bytes); a workdir holding a probe run of another config is refused with the differing
keys named (``runtime.run.require_same_config``), never silently overwritten.

The trained probe is saved to ``WORKDIR/probe/`` (Orbax params + ``probe_config.json``
holding the probe name and fields, the feature settings and the threshold), which
:func:`load_probe` reads back for the integrated system.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import run_manifest, split_grid
from dinolg_jax.eval import features as features_lib
from dinolg_jax.eval import metrics as metrics_lib
from dinolg_jax.eval import roc_plot
from dinolg_jax.models.probes import PROBE_INPUTS, build_probe
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.runtime import run as run_lib
from dinolg_jax.runtime.json_file import write_json
from dinolg_jax.runtime.progress import Progress

matplotlib.use("Agg")

PROBE_DIR = "probe"


def weighted_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum_i w_i * BCE(logit_i, y_i) / sum_i w_i``; logits, labels (0/1), weights [B]."""
    y = labels.astype(jnp.float32)
    per = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), y)
    return jnp.sum(weights * per) / jnp.maximum(jnp.sum(weights), 1e-12)


def resolve_pos_weight(pos_weight: Any, labels: np.ndarray) -> float:
    """``"balanced"`` -> n_neg / n_pos of ``labels``; a number is used as is."""
    labels = np.asarray(labels, bool)
    if pos_weight == "balanced":
        n_pos = int(labels.sum())
        if n_pos == 0:
            raise ValueError("the probe's training split has no slice with calcium")
        return float((labels.size - n_pos) / n_pos)
    return float(pos_weight)


def _rows(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows of a (possibly memory-mapped) array as float32, read in index order."""
    order = np.argsort(idx)
    out = np.empty((len(idx), *x.shape[1:]), np.float32)
    out[order] = np.asarray(x[idx[order]], np.float32)
    return out


def feature_stats(x: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and 1/std over all rows (and tokens) of x [N, ..., F], float32 [F].

    Read in row chunks so a memory-mapped token cache never loads whole; float64
    accumulation; a feature that never varies gets inv_std 1 (it only shifts).
    """
    f = x.shape[-1]
    total, total_sq, count = np.zeros(f), np.zeros(f), 0
    for start in range(0, len(x), chunk):
        rows = np.asarray(x[start : start + chunk], np.float64).reshape(-1, f)
        total += rows.sum(0)
        total_sq += np.square(rows).sum(0)
        count += len(rows)
    if count == 0:
        raise ValueError("no rows to compute feature statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    inv_std = np.where(
        std > 1e-6 * np.maximum(np.abs(mean), 1.0), 1.0 / np.maximum(std, 1e-12), 1.0
    )
    return mean.astype(np.float32), inv_std.astype(np.float32)


def train_probe(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    pos_weight: float,
    seed: int,
    weight_decay: float = 0.0,
    show_progress: bool = True,
) -> tuple[Any, list[float]]:
    """Trains a probe with AdamW and the weighted BCE on host features.

    The probe's ``standardize`` statistics are set from ``x`` (the training split) and
    frozen; everything else is trained.

    Each epoch visits every row once in an order drawn from ``(seed, epoch)``; the last
    batch is padded with zero-weight rows so every step has one shape.

    Args:
      model: a probe; x: [N, ...] features (numpy or memmap); y: [N] bool labels.
      lr, epochs, batch_size, weight_decay: optimiser settings.
      pos_weight: loss weight of a positive row (negatives weigh 1).
      seed: init and shuffling seed.
      show_progress: the trainers' progress line on stderr (``runtime.progress``: step,
        steps/s, time left; process 0 only). It never changes the result.

    Returns:
      (params, mean loss per epoch).
    """
    y = np.asarray(y, bool)
    n = len(y)
    if n == 0:
        raise ValueError("no training rows for the probe")
    batch_size = min(int(batch_size), n)
    key = jax.random.key(int(seed), impl="rbg")  # fast to compile, see segment.init_key
    params = jax.jit(model.init)(key, _rows(x, np.arange(1)))["params"]
    mean, inv_std = feature_stats(x)
    params = {**params, "standardize": {"mean": jnp.asarray(mean), "inv_std": jnp.asarray(inv_std)}}
    frozen = {k: ("frozen" if k == "standardize" else "train") for k in params}
    tx = optax.multi_transform(
        {"train": optax.adamw(lr, weight_decay=weight_decay), "frozen": optax.set_to_zero()},
        frozen,
    )
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb, wb):
        def loss_fn(p):
            return weighted_bce(model.apply({"params": p}, xb, train=True), yb, wb)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    history = []
    steps_per_epoch = -(-n // batch_size)
    progress = Progress(
        int(epochs) * steps_per_epoch, 0, enabled=show_progress and jax.process_index() == 0
    )
    try:
        for epoch in range(int(epochs)):
            order = np.random.default_rng([int(seed), epoch]).permutation(n)
            losses = []
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                pad = batch_size - len(idx)
                full = np.concatenate([idx, np.zeros(pad, idx.dtype)])
                w = np.where(y[full], pos_weight, 1.0).astype(np.float32)
                w[len(idx) :] = 0.0
                params, opt_state, loss = step(params, opt_state, _rows(x, full), y[full], w)
                losses.append(float(loss))
                progress.update(epoch * steps_per_epoch + start // batch_size + 1)
            history.append(float(np.mean(losses)))
    finally:
        progress.close()
    return params, history


def predict_scores(
    model: nn.Module, params: Any, x: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """sigmoid(logit) per row, float64 [N]."""
    fn = jax.jit(lambda p, xb: jax.nn.sigmoid(model.apply({"params": p}, xb)))
    out = []
    for start in range(0, len(x), batch_size):
        idx = np.arange(start, min(start + batch_size, len(x)))
        out.append(np.asarray(fn(params, _rows(x, idx)), np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def score_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Binary metrics at ``score >= threshold`` plus ROC-AUC (NaN -> None for JSON)."""
    out = metrics_lib.binary_metrics(labels, scores >= threshold)
    out["roc_auc"] = metrics_lib.roc_auc(scores, labels)
    out["threshold"] = float(threshold)
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


def confusion_png(m: dict[str, Any], path: str | os.PathLike, title: str) -> None:
    """Writes the 2x2 confusion matrix (rows: truth, columns: prediction) as a PNG."""
    import matplotlib.pyplot as plt

    cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=120)
    ax.imshow(cm, cmap="Blues")
    names = ["no calcium", "calcium"]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    tags = [["TN", "FP"], ["FN", "TP"]]
    for i in range(2):
        for j in range(2):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, f"{tags[i][j]}\n{cm[i, j]}", ha="center", va="center", color=color)
    f1 = m.get("f1")
    ax.set_title(f"{title}  F1={f1:.3f}" if f1 is not None else title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_probe(directory: str | os.PathLike, params: Any, probe_config: dict[str, Any]) -> Path:
    """Orbax params + ``probe_config.json`` in ``directory`` (replaced if present)."""
    root = Path(directory).absolute()
    root.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(root / "params", params, force=True)
        ckptr.wait_until_finished()
    write_json(root / "probe_config.json", probe_config)
    return root


def load_probe(directory: str | os.PathLike) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Reads a saved probe (a probe workdir or its ``probe/``): (model, params, config)."""
    root = Path(directory).absolute()
    if not (root / "probe_config.json").is_file() and (root / PROBE_DIR).is_dir():
        root = root / PROBE_DIR
    if not (root / "probe_config.json").is_file():
        raise FileNotFoundError(f"no saved probe (probe_config.json) in {directory}")
    cfg = json.loads((root / "probe_config.json").read_text())
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(root / "params")
    return build_probe(cfg["name"], **cfg["kwargs"]), params, cfg


def make_score_fn(
    vit: nn.Module, probe_model: nn.Module, probe_config: dict[str, Any], mesh: jax.sharding.Mesh
):
    """Jitted gate for the integrated system: images -> calcium scores in [0, 1].

    ``(encoder_params, probe_params, images [B, H, W, 1]) -> float32 [B]``, the batch split
    over the mesh. The features are computed exactly as for training
    (``features.pooled_and_tokens``); compare the scores with ``probe_config["threshold"]``.

    Args:
      vit: ``features.encoder_model(encoder_config, probe_config["n_last_blocks"])``.
      probe_model, probe_config: from :func:`load_probe`.
      mesh: the (data, fsdp) mesh.
    """
    kind, pool = probe_config["input"], int(probe_config["token_pool"])
    # A saved probe_config.json: exports written before the pooling option lack it.
    pooling = str(probe_config.get("pooling", "cls_mean"))

    def scores(enc_params, probe_params, images):
        pooled, tokens = features_lib.pooled_and_tokens(vit, enc_params, images, pool, pooling)
        x = pooled if kind == "pooled" else tokens
        return jax.nn.sigmoid(probe_model.apply({"params": probe_params}, x.astype(jnp.float32)))

    rep, batch = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
    return jax.jit(scores, in_shardings=(rep, rep, batch), out_shardings=batch)


def split_intervals(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    manifest: Any,
    split: str,
) -> dict[str, dict[str, Any]]:
    """95 % bootstrap intervals of a split's ROC-AUC and F1, resampling patients.

    Args:
      scores, labels: [N] the split's slice scores and ``has_calcium``, in record order.
      threshold: F1's decision threshold (``score >= threshold``).
      manifest: the manifest (or its path) whose ``split`` the rows are.
      split: the split; each of its studies is a patient (``data.manifest.record_studies``),
        whose slices are drawn together.

    Returns:
      ``{"roc_auc": {...}, "f1": {...}}``, each ``eval.metrics.Interval.summary()``
      (``value``, ``ci95`` [lo, hi], ``n_boot``, ``n_groups``), from
      ``eval.metrics.binary_intervals`` with its default resamples and seed.

    Raises:
      ValueError: the rows are not the split's records (counts differ).
    """
    groups = manifest_lib.record_studies(manifest, split)
    if len(groups) != len(scores):
        raise ValueError(f"{len(scores)} scores for the {len(groups)} records of split {split!r}")
    intervals = metrics_lib.binary_intervals(scores, labels, threshold, groups=groups)
    return {name: interval.summary() for name, interval in intervals.items()}


def run_probe(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Features -> probe -> val threshold -> val/test metrics, PNG, saved probe, summary.

    Returns:
      The summary (also ``workdir/summary.json``): ``probe``, ``pos_weight``, ``history``
      (loss per epoch), ``threshold``, ``val`` and ``test`` metrics (``test["intervals"]``:
      :func:`split_intervals`), split sizes, ``encoder_checksum``, ``params_checksum``,
      ``wall_s``; the grid its features were taken at (``data.split_grid``:
      ``pixel_spacing_mm`` median / min / max over the train split's studies at the
      input size, ``slice_size``); and ``patch``, the dense probe's result
      (``eval.patch_probe.run_patch_probe``), when ``config.patch_probe.enabled``.

    Raises:
      runtime.run.ConfigMismatchError: ``workdir`` holds a probe run of another config
        (the keys named; ``runtime.run.HARMLESS_KEYS`` may differ).
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # a re-run retrains from the cached features; one with another config stops here
    run_lib.require_same_config(workdir, config.to_dict())
    write_json(workdir / "config.json", config.to_dict())
    if not config.encoder:
        raise ValueError("config.encoder must point at a pretraining workdir or encoder export")
    manifest = run_manifest.prepare_manifest(config, workdir)
    enc_params, enc_cfg = ckpt_lib.load_encoder(config.encoder)
    enc_sum = ckpt_lib.params_checksum(enc_params)
    f = config.features
    vit = features_lib.encoder_model(enc_cfg, f.n_last_blocks, f.dtype or None)
    mesh = mesh_lib.mesh_from_config(config.mesh)
    cache = Path(f.cache_dir) if f.cache_dir else workdir / "features"
    feats = {
        s: features_lib.extract_features(
            vit, enc_params, manifest, config.splits[s], config.data, mesh,
            token_pool=int(f.token_pool), pooling=str(f.pooling),
            cache_dir=cache, encoder_checksum=enc_sum,
        )
        for s in ("train", "val", "test")
    }  # fmt: skip
    name = str(config.probe.name)
    kind = PROBE_INPUTS[name]
    model = build_probe(name, **dict(config.probe.kwargs))
    y_train = feats["train"]["has_calcium"]
    pos_weight = resolve_pos_weight(config.loss.pos_weight, y_train)
    params, history = train_probe(
        model, feats["train"][kind], y_train,
        lr=float(config.optim.lr), epochs=int(config.optim.epochs),
        batch_size=int(config.optim.batch_size), pos_weight=pos_weight,
        seed=int(config.seed), weight_decay=float(config.optim.weight_decay),
    )  # fmt: skip
    scores = {s: predict_scores(model, params, feats[s][kind]) for s in ("val", "test")}
    y_val = feats["val"]["has_calcium"]
    target = float(config.eval.target_recall)
    threshold = metrics_lib.threshold_for_recall(scores["val"], y_val, target)
    val = score_metrics(scores["val"], y_val, threshold)
    test = score_metrics(scores["test"], feats["test"]["has_calcium"], threshold)
    test["intervals"] = split_intervals(
        scores["test"], feats["test"]["has_calcium"], threshold, manifest, config.splits.test
    )
    if jax.process_index() == 0:
        confusion_png(test, workdir / "confusion_test.png", f"{name} probe, test")
        y_test = feats["test"]["has_calcium"]
        for split, y in (("val", y_val), ("test", y_test)):
            title = f"{name} probe, {split}"
            roc_plot.roc_png(scores[split], y, threshold, workdir / f"roc_{split}.png", title)
        np.save(workdir / "test_scores.npy", scores["test"])  # rows in record order
        np.save(workdir / "test_has_calcium.npy", np.asarray(feats["test"]["has_calcium"], bool))
    probe_config = {
        "name": name,
        "kwargs": dict(config.probe.kwargs),
        "input": kind,
        "n_last_blocks": int(f.n_last_blocks),
        "token_pool": int(f.token_pool),
        "pooling": str(f.pooling),
        "hu_window": list(config.data.hu_window),
        "eval_size": int(config.data.eval_size),
        # The slice side features were extracted at: inference resizes every slice to it.
        "input_size": int(config.data.eval_size)
        or manifest_lib.load(manifest).slice_shape(config.splits.train)[0],
        "threshold": threshold,
        "target_recall": target,
        "encoder_checksum": enc_sum,
    }
    save_probe(workdir / PROBE_DIR, params, probe_config)
    patch = None
    if config.patch_probe.enabled:
        patch = _dense_probe(config, feats, manifest, enc_cfg, probe_config["input_size"], workdir)
    summary = {
        "probe": name,
        "pos_weight": pos_weight,
        "history": history,
        "threshold": threshold,
        "target_recall": target,
        "val": val,
        "test": test,
        "num_slices": {s: len(feats[s]["has_calcium"]) for s in feats},
        "num_calcium_slices": {s: int(np.sum(feats[s]["has_calcium"])) for s in feats},
        "encoder_checksum": enc_sum,
        "params_checksum": ckpt_lib.params_checksum(params),
        # the spacing and slice size its features were taken at, for inference to resample to
        **split_grid.split_grid(
            manifest, config.splits.train, input_size=int(config.data.eval_size)
        ).summary_fields(),
        "wall_s": time.perf_counter() - t_start,
    }
    if patch is not None:
        summary["patch"] = patch
    write_json(workdir / "summary.json", summary)
    return summary


def _dense_probe(
    config: ml_collections.ConfigDict,
    feats: dict[str, dict[str, np.ndarray]],
    manifest: Any,
    enc_cfg: dict[str, Any],
    input_size: int,
    workdir: Path,
) -> dict[str, Any]:
    """``eval.patch_probe`` on the cached tokens: per-patch calcium from the pixel labels
    (the test split's token scores and cells saved in ``workdir``, process 0)."""
    from dinolg_jax.eval import patch_probe
    from dinolg_jax.models.vit import decode_variant

    if not isinstance(manifest, manifest_lib.Manifest):
        manifest = manifest_lib.load(manifest)
    side = decode_variant(enc_cfg["variant"]).patch * int(config.features.token_pool)
    grid = (int(input_size) // side, int(input_size) // side)
    cells = {s: patch_probe.split_calcium_cells(manifest, config.splits[s], grid) for s in feats}
    save = workdir if jax.process_index() == 0 else None
    return patch_probe.run_patch_probe(feats, cells, config.patch_probe, int(config.seed), save)
