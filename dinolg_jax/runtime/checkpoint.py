"""Checkpoints: train state + data-iterator state + config, the exported encoder, checksums.

Layout of a pretraining workdir::

    WORKDIR/checkpoints/<step>/state/    Orbax PyTree: the whole train state (sharded)
    WORKDIR/checkpoints/<step>/data/     JSON: the Grain iterator state
    WORKDIR/checkpoints/<step>/config/   JSON: the resolved config
    WORKDIR/encoder/params/              Orbax PyTree: the teacher backbone's params
    WORKDIR/encoder/model_config.json    the ``config.model`` needed to rebuild the ViT

:class:`Checkpointer` wraps an Orbax ``CheckpointManager`` (asynchronous saves, the last
``max_to_keep`` steps kept). :func:`save_encoder` / :func:`load_encoder` are what the
probe, the U-Net and scoring use to get the pretrained backbone.

:func:`params_checksum` is the project-wide parameter fingerprint written into every
``summary.json``: SHA-256 over the leaves of a pytree in sorted key-path order, each leaf
contributing its path string, dtype name, shape and C-order bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

ENCODER_DIR = "encoder"
CHECKPOINT_DIR = "checkpoints"
_MODEL_CONFIG = "model_config.json"


def _type_registry() -> Any:
    """Orbax's standard type handlers, with replica-parallel array saving off.

    Orbax's default on CPU splits each replicated array across its replicas with one
    compiled ``lax.slice`` per shard shape (about 1200 for the smoke train state on 8
    devices: ~13 s of compiles at the first save). Its GPU default, and ours, is to
    copy replica 0 of each shard whole.
    """
    th = ocp.type_handlers
    return th.create_type_handler_registry(
        (int, th.ScalarHandler()),
        (float, th.ScalarHandler()),
        (bytes, th.ScalarHandler()),
        (np.number, th.ScalarHandler()),
        (np.ndarray, th.NumpyHandler()),
        (jax.Array, th.ArrayHandler(use_replica_parallel=False)),
        (str, th.StringHandler()),
    )


def _pytree_handler() -> ocp.PyTreeCheckpointHandler:
    return ocp.PyTreeCheckpointHandler(type_handler_registry=_type_registry())


def _host_array(x: Any) -> np.ndarray:
    """A leaf as a full numpy array on this host (gathers non-addressable shards)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def params_checksum(tree: Any) -> str:
    """SHA-256 fingerprint of a pytree of arrays, independent of sharding and device.

    Leaves are visited in sorted ``jax.tree_util.keystr`` order; for each leaf the hash
    absorbs ``path``, ``dtype.name``, ``shape`` (as text, ``|``-separated) and the
    array's C-order bytes. Two parameter trees have equal checksums iff they have the
    same paths, dtypes, shapes and bit patterns. Collective in multi-process runs (every
    process must call it).

    Args:
      tree: pytree of ``jax.Array`` / numpy arrays (e.g. ``{"student": ..., "teacher": ...}``).

    Returns:
      The hex digest (64 characters).
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    digest = hashlib.sha256()
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        arr = np.ascontiguousarray(_host_array(leaf))
        header = f"{jax.tree_util.keystr(path)}|{arr.dtype.name}|{arr.shape}|"
        digest.update(header.encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def encode_data_state(state: Any) -> dict[str, Any]:
    """Makes a Grain iterator state JSON-safe (``bytes`` states are base64-encoded)."""
    if state is None:
        return {"kind": "none"}
    if isinstance(state, bytes | bytearray):
        return {"kind": "bytes", "value": base64.b64encode(bytes(state)).decode("ascii")}
    json.dumps(state)  # raises TypeError early if the state is not JSON-serialisable
    return {"kind": "json", "value": state}


def decode_data_state(payload: Mapping[str, Any]) -> Any:
    """Inverse of :func:`encode_data_state`."""
    kind = payload.get("kind")
    if kind == "none":
        return None
    if kind == "bytes":
        return base64.b64decode(payload["value"])
    if kind == "json":
        return payload["value"]
    raise ValueError(f"unknown data-state kind {kind!r} in checkpoint")


class Checkpointer:
    """Saves and restores (train state, data-iterator state, config) by step.

    Saves are asynchronous: :meth:`save` returns once the arrays are copied off the
    devices; call :meth:`wait` before reading the files or exiting. Only the last
    ``max_to_keep`` steps are kept.
    """

    def __init__(
        self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True
    ):
        """Opens (or creates) the checkpoint directory.

        Args:
          directory: where step folders live (``WORKDIR/checkpoints``).
          max_to_keep: number of most recent checkpoints kept.
          async_save: write in a background thread.
        """
        self.directory = epath.Path(os.fspath(directory)).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": _pytree_handler(),
                "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """Most recent finished checkpoint step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All kept checkpoint steps, ascending."""
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        data_state: Any = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Starts saving one checkpoint (forced, whatever the save interval).

        Args:
          step: the number of optimiser steps already taken.
          state: the train-state pytree (sharded ``jax.Array``s are fine).
          data_state: the Grain iterator's ``get_state()`` (dict or bytes) or None.
          config: the resolved config as a JSON-safe dict.
        """
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state),
                data=ocp.args.JsonSave(encode_data_state(data_state)),
                config=ocp.args.JsonSave(dict(config or {})),
            ),
            force=True,
        )

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, Any, dict[str, Any]]:
        """Restores a checkpoint onto the given shardings.

        Args:
          step: which step; None = the latest.
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (the
            structure and placement to restore into).

        Returns:
          ``(state, data_state, config)``.

        Raises:
          FileNotFoundError: if there is no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        out = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    abstract_state,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
                ),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        return out.state, decode_data_state(out.data), dict(out.config)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def save_encoder(
    directory: str | os.PathLike, params: Any, model_config: Mapping[str, Any]
) -> epath.Path:
    """Exports backbone params plus the model config that rebuilds the ViT.

    Args:
      directory: target folder (created; an existing export there is replaced).
      params: the ViT's ``params`` collection (e.g. the teacher backbone).
      model_config: JSON-safe dict with at least ``variant`` (e.g. ``config.model``).

    Returns:
      The encoder folder.
    """
    if "variant" not in model_config:
        raise ValueError("model_config must name the ViT 'variant'")
    root = epath.Path(os.fspath(directory)).absolute()
    root.mkdir(parents=True, exist_ok=True)
    with ocp.Checkpointer(_pytree_handler()) as ckptr:
        ckptr.save(root / "params", args=ocp.args.PyTreeSave(params), force=True)
    if jax.process_index() == 0:
        tmp = root / (_MODEL_CONFIG + ".tmp")
        tmp.write_text(json.dumps(dict(model_config), indent=2, sort_keys=True))
        tmp.rename(root / _MODEL_CONFIG)
    multihost_utils.sync_global_devices("save_encoder")
    return root


def load_encoder(directory: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Loads an encoder exported by :func:`save_encoder`.

    Args:
      directory: the encoder folder, or a pretraining workdir that contains ``encoder/``.

    Returns:
      ``(params, model_config)``: params as a pytree of host numpy arrays (float32), the
      model config as a dict (``variant``, ``dtype``, ...).

    Raises:
      FileNotFoundError: if no encoder export is found there.
    """
    root = epath.Path(os.fspath(directory)).absolute()
    if not (root / _MODEL_CONFIG).exists() and (root / ENCODER_DIR / _MODEL_CONFIG).exists():
        root = root / ENCODER_DIR
    if not (root / _MODEL_CONFIG).exists() or not (root / "params").exists():
        raise FileNotFoundError(f"no encoder export (params/ + {_MODEL_CONFIG}) in {directory}")
    model_config = json.loads((root / _MODEL_CONFIG).read_text())
    with ocp.Checkpointer(_pytree_handler()) as ckptr:
        meta = ckptr.metadata(root / "params")
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        params = ckptr.restore(
            root / "params", args=ocp.args.PyTreeRestore(restore_args=restore_args)
        )
    return params, model_config
