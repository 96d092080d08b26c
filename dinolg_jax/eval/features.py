"""Frozen-encoder features of a whole split, extracted once (jitted, sharded) and cached.

Per slice (``data.pipeline.eval_dataset`` order: every record of the split once):

    pooled  float32 [N, (n+1) D]  CLS of the last n blocks (each through the final norm)
                                  and the mean of the final patch tokens, concatenated
                                  (DINO's linear-evaluation feature; input of ``linear``)
                                  with ``pooling="cls_mean"``; ``"cls_mean_max"`` appends
                                  the per-channel max over the final patch tokens ([N,
                                  (n+2) D]), ``"max"`` is that max alone ([N, D]): a
                                  lesion in one patch of 64 moves the max, not the mean
    tokens  float16 [N, T, D]     final patch tokens, average-pooled over
                                  ``token_pool x token_pool`` cells of the patch grid,
                                  T = (H/p/pool)(W/p/pool) (input of ``transformer``)
    has_calcium bool [N], index int64 [N] (record index in the split)

The extraction program is one ``jax.jit`` whose batch is split over every device of the
mesh (params replicated). Cache: ``CACHE_DIR/<key>/{pooled,tokens,has_calcium,index}.npy``
plus ``meta.json``, where ``key`` is a hash of the encoder's ``params_checksum``, the split
and every setting that changes the features (n, pool, HU window, size, variant); tokens
are written through a memory map and read back with ``mmap_mode="r"``, so a split larger
than RAM works. Writes go to a temporary folder renamed at the end (atomic).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import pipeline
from dinolg_jax.models.vit import ViT, decode_variant
from dinolg_jax.runtime import mesh as mesh_lib

FIELDS = ("pooled", "tokens", "has_calcium", "index")


def encoder_model(model_config: dict[str, Any], n_last_blocks: int, dtype: Any = None) -> ViT:
    """The ViT of an encoder export (``load_encoder``'s config) returning the last n CLS.

    ``model_config`` is an export's model_config.json, whose keys differ by writer (a
    pretraining export has no ``ref_image_size``, an imported one no ``attention_impl`` or
    ``pad_tokens_to``): a missing key takes the ViT's own default.
    """
    return ViT(
        variant=model_config["variant"],
        dtype=jnp.dtype(dtype or model_config.get("dtype", "float32")),
        n_last_blocks=int(n_last_blocks),
        attention_impl=model_config.get("attention_impl") or None,
        pad_tokens_to=int(model_config.get("pad_tokens_to", 0) or 0),
        ref_image_size=int(model_config.get("ref_image_size", 224)),
    )


POOLINGS = ("cls_mean", "cls_mean_max", "max")


def pooled_and_tokens(
    vit: ViT, params: Any, images: jax.Array, token_pool: int, pooling: str = "cls_mean"
):
    """Features of one batch: (pooled float32 [B, F] with F by ``pooling``, tokens float16
    [B, T, D]); see the module docstring."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    cls, aux = vit.apply({"params": params}, images, train=False)
    p = decode_variant(vit.variant).patch
    b, h, w, _ = images.shape
    patches = aux["tokens"][:, 1:].astype(jnp.float32)  # [B, N, D]
    per_block = aux.get("cls_per_block", cls[:, None]).astype(jnp.float32)  # [B, n, D]
    parts = [per_block.reshape(b, -1), patches.mean(axis=1)]
    if pooling == "cls_mean_max":
        parts.append(patches.max(axis=1))
    elif pooling == "max":
        parts = [patches.max(axis=1)]
    pooled = jnp.concatenate(parts, axis=-1)
    gh, gw, d = h // p, w // p, patches.shape[-1]
    q = int(token_pool)
    if gh % q or gw % q:
        raise ValueError(f"token_pool {q} does not divide the {gh}x{gw} patch grid")
    grid = patches.reshape(b, gh // q, q, gw // q, q, d).mean(axis=(2, 4))
    return pooled, grid.reshape(b, -1, d).astype(jnp.float16)


@functools.lru_cache(maxsize=8)
def make_feature_fn(vit: ViT, mesh: jax.sharding.Mesh, token_pool: int, pooling: str = "cls_mean"):
    """Jitted ``(params, images [B,H,W,1]) -> (pooled, tokens)``, batch split over the mesh."""
    batch = mesh_lib.batch_sharding(mesh)
    return jax.jit(
        functools.partial(pooled_and_tokens, vit, token_pool=token_pool, pooling=pooling),
        in_shardings=(mesh_lib.replicated(mesh), batch),
        out_shardings=(batch, batch),
    )


def feature_key(encoder_checksum: str, split: str, settings: dict[str, Any]) -> str:
    """Cache key: sha256 of the encoder checksum, the split and the feature settings."""
    text = json.dumps({"encoder": encoder_checksum, "split": split, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def gather_rows(x: Any) -> np.ndarray:
    """The global batch's rows on this host: of a global jax.Array, or of every process's
    host rows (a process's own rows when there is one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    if isinstance(x, jax.Array):
        shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
        return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])
    return np.asarray(x)


def extract_features(
    vit: ViT,
    params: Any,
    manifest: manifest_lib.Manifest | str | os.PathLike,
    split: str,
    data: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    *,
    token_pool: int = 1,
    pooling: str = "cls_mean",
    cache_dir: str | os.PathLike | None = None,
    encoder_checksum: str | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Features of every slice of ``split`` (module docstring), from the cache when present.

    Args:
      vit: the encoder (``encoder_model``); params: its parameters.
      manifest, split: which records; data: ``config.data`` (``batch_size`` = global batch,
        ``hu_window``, ``eval_size`` as in pretraining).
      mesh: the batch is split over all its devices.
      token_pool: pooling factor of the token grid.
      pooling: what ``pooled`` holds (:data:`POOLINGS`, module docstring).
      cache_dir: folder of cached features (None: no cache).
      encoder_checksum: ``params_checksum`` of ``params`` (computed when None and caching).
      progress: show a tqdm bar.

    Returns:
      dict with ``pooled``, ``tokens``, ``has_calcium``, ``index`` (record order).
    """
    if not isinstance(manifest, manifest_lib.Manifest):
        manifest = manifest_lib.load(manifest)
    n = manifest.num_records(split)
    target = None
    if cache_dir is not None:
        if encoder_checksum is None:
            from dinolg_jax.runtime.checkpoint import params_checksum

            encoder_checksum = params_checksum(params)
        settings = {
            "variant": vit.variant,
            "n_last_blocks": vit.n_last_blocks,
            "token_pool": int(token_pool),
            "pooling": str(pooling),
            "hu_window": list(data.hu_window),
            "eval_size": int(data.eval_size),
            "dtype": jnp.dtype(vit.dtype).name,
            "num_records": n,
        }
        target = Path(cache_dir) / feature_key(encoder_checksum, split, settings)
        if (target / "meta.json").is_file():
            return load_features(target)
    fn = make_feature_fn(vit, mesh, int(token_pool), str(pooling))
    params = jax.device_put(params, mesh_lib.replicated(mesh))
    tmp = None if target is None else target.with_name(target.name + f".tmp{os.getpid()}")
    out: dict[str, Any] = {}
    batches = pipeline.eval_dataset(manifest, split, data)
    total = -(-n // int(data.batch_size))
    for batch in tqdm(batches, total=total, desc=f"features {split}", disable=not progress):
        images = jax.make_array_from_process_local_data(
            mesh_lib.batch_sharding(mesh),
            np.asarray(batch["image"]),
            (np.shape(batch["image"])[0] * jax.process_count(), *np.shape(batch["image"])[1:]),
        )
        pooled, tokens = fn(params, images)
        pooled, tokens = gather_rows(pooled), gather_rows(tokens)
        valid = gather_rows(np.asarray(batch["valid"], bool))
        index = gather_rows(np.asarray(batch["index"], np.int64))[valid]
        if not out:
            out["pooled"] = np.zeros((n, pooled.shape[-1]), np.float32)
            shape = (n, *tokens.shape[1:])
            if tmp is not None and jax.process_index() == 0:
                tmp.mkdir(parents=True, exist_ok=True)
                out["tokens"] = np.lib.format.open_memmap(
                    tmp / "tokens.npy", "w+", np.float16, shape
                )
            else:
                out["tokens"] = np.zeros(shape, np.float16)
            out["has_calcium"] = np.zeros(n, bool)
        out["pooled"][index] = pooled[valid]
        out["tokens"][index] = tokens[valid]
        out["has_calcium"][index] = gather_rows(np.asarray(batch["has_calcium"], bool))[valid]
    out["index"] = np.arange(n, dtype=np.int64)
    if tmp is not None and jax.process_index() == 0:
        for k in ("pooled", "has_calcium", "index"):
            np.save(tmp / f"{k}.npy", out[k])
        out["tokens"].flush()
        (tmp / "meta.json").write_text(json.dumps({"split": split, **settings}, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return load_features(target)
    return out


def load_features(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a cached feature folder (tokens memory-mapped read-only)."""
    folder = Path(folder)
    return {
        k: np.load(folder / f"{k}.npy", mmap_mode="r" if k == "tokens" else None) for k in FIELDS
    }
