"""Checkpoints: train state + data-iterator state + config, the exported encoder, checksums.

Layout of a pretraining workdir::

    WORKDIR/checkpoints/<step>/state/    Orbax PyTree: the whole train state (sharded)
    WORKDIR/checkpoints/<step>/data/     JSON: the Grain iterator state
    WORKDIR/checkpoints/<step>/config/   JSON: the resolved config
    WORKDIR/checkpoints/<step>/checksum/ JSON: checksums of the three items above
    WORKDIR/encoder/params/              Orbax PyTree: the teacher backbone's params
    WORKDIR/encoder/model_config.json    the ``config.model`` needed to rebuild the ViT
    WORKDIR/encoder/export.json          params_checksum and step of the export

:class:`Checkpointer` wraps an Orbax ``CheckpointManager`` (asynchronous saves, the last
``max_to_keep`` steps kept). :func:`save_encoder` / :func:`load_encoder` are what the
probe, the U-Net and scoring use to get the pretrained backbone.

:func:`params_checksum` is the project-wide parameter fingerprint written into every
``summary.json``: SHA-256 over the leaves of a pytree in sorted key-path order, each leaf
contributing its path string, dtype name, shape and C-order bytes.

Nothing wrong taken as right:

- Every checkpoint stores the `params_checksum` of its train state and the SHA-256 of
  its data-iterator state and config; :meth:`Checkpointer.restore` recomputes them. A
  step that fails to read or does not match is moved to ``<checkpoints>_corrupt/<step>``
  with a warning naming it, and the newest good step is restored instead; when no step
  is good, `CheckpointError` (never a silent fresh start). Checkpoints written before
  checksums were kept restore with a warning that they are unverified.
- :func:`restore_or_init` starts from scratch only in a workdir that holds no run.
- :func:`save_encoder` writes the export beside the old one and swaps it in, so an
  existing export is replaced whole or not at all; :func:`load_encoder` checks the
  params against ``export.json``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging as std_logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

ENCODER_DIR = "encoder"
CHECKPOINT_DIR = "checkpoints"
_MODEL_CONFIG = "model_config.json"
_EXPORT = "export.json"
_CHECKSUM_ITEM = "checksum"


class CheckpointError(RuntimeError):
    """No usable checkpoint where a run exists, or an export that fails its checksum."""


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


def _drop_closed_loop_noise() -> None:
    """After a failed Orbax restore, the reads of the other arrays fail too and their
    asyncio tasks are freed unretrieved: each then logs ``Task exception was never
    retrieved`` with a traceback through the ``asyncio`` logger, and callbacks still
    pending reach a closed loop and print ``RuntimeError: Event loop is closed`` through
    ``sys.unraisablehook`` (hundreds of lines, at whatever time the garbage collector
    runs). The one failure that matters is raised to `Checkpointer.restore`, which names
    it in one warning. These filters drop exactly those two kinds (unretrieved
    ``async_deserialize`` tasks, closed-loop callbacks) and pass everything else on."""
    asyncio_logger = std_logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedReadFilter) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_UnretrievedReadFilter())
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._drops_closed_loop = True
    sys.unraisablehook = hook


class _UnretrievedReadFilter(std_logging.Filter):
    """Drops asyncio's report of an Orbax array read whose failure nobody awaited."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Task exception was never retrieved")
            and "coro=<async_deserialize()" in message
        )


def _json_sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _checksums(state: Any, data: Any, config: Any) -> dict[str, str]:
    """What a checkpoint stores about itself: `params_checksum` of the state (and of its
    ``params`` alone, for readers of only those), SHA-256 of the data state and config."""
    out = {
        "state": params_checksum(state),
        "data": _json_sha256(data),
        "config": _json_sha256(config),
    }
    params = state.get("params") if isinstance(state, Mapping) else getattr(state, "params", None)
    if params is not None:
        out["params"] = params_checksum(params)
    return out


def stored_checksums(directory: str | os.PathLike, step: int) -> dict[str, str] | None:
    """The checksums a checkpoint step stored (``state``, ``params``, ``data``, ``config``).

    For readers that restore part of a step themselves (e.g. only ``params``): compare
    ``params_checksum(params)`` with ``["params"]``. None when the step stored none.
    """
    path = Path(directory) / str(int(step)) / _CHECKSUM_ITEM / "metadata"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


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
    """Saves and restores (train state, data-iterator state, config) by step, verified.

    Saves are asynchronous: :meth:`save` returns once the arrays are copied off the
    devices (and hashed, for the stored checksum); call :meth:`wait` before reading the
    files or exiting. Only the last ``max_to_keep`` steps are kept. :meth:`restore`
    checks each step against its stored checksums (module docstring).
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
                _CHECKSUM_ITEM: ocp.JsonCheckpointHandler(),
            },
        )
        self.restored_step: int | None = None

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
        data, config = encode_data_state(data_state), dict(config or {})
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state),
                data=ocp.args.JsonSave(data),
                config=ocp.args.JsonSave(config),
                **{_CHECKSUM_ITEM: ocp.args.JsonSave(_checksums(state, data, config))},
            ),
            force=True,
        )

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, Any, dict[str, Any]]:
        """Restores a checkpoint onto the given shardings, verified against its checksums.

        Args:
          step: which step; None = the newest good one: a newer step that fails to read
            or to verify is moved aside to ``<checkpoints>_corrupt/`` with a warning
            naming it, and the next older one is tried.
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (the
            structure and placement to restore into).

        Returns:
          ``(state, data_state, config)``; ``self.restored_step`` is the step restored.

        Raises:
          FileNotFoundError: if there is no checkpoint.
          CheckpointError: the step asked for, or with None every step, is unreadable or
            does not match its checksums (the message names each and why).
        """
        steps = self.all_steps() if step is None else [int(step)]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        _drop_closed_loop_noise()  # before: the noise starts while a failed read unwinds
        problems = []
        for s in reversed(steps):
            try:
                out = self._restore_verified(s, abstract_state)
            except Exception as e:  # Orbax / TensorStore / JSON raise many types
                reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                problems.append(f"step {s}: {reason}")
                if step is not None:
                    break
                moved = self._quarantine(s)
                logging.warning(
                    "checkpoint %s is unusable (%s); moved to %s, trying an older step",
                    self.directory / str(s),
                    reason,
                    moved,
                )
                continue
            self.restored_step = s
            return out
        raise CheckpointError(
            f"no usable checkpoint in {self.directory}: {'; '.join(problems)}. The run is not "
            "restarted from scratch over them: move the workdir away to start afresh"
        )

    def _restore_verified(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict]:
        items = {
            "state": ocp.args.PyTreeRestore(
                abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
            ),
            "data": ocp.args.JsonRestore(),
            "config": ocp.args.JsonRestore(),
        }
        verified = (self.directory / str(step) / _CHECKSUM_ITEM).exists()
        if verified:
            items[_CHECKSUM_ITEM] = ocp.args.JsonRestore()
        out = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        if verified:
            stored = dict(out[_CHECKSUM_ITEM])
            got = _checksums(out.state, out.data, dict(out.config))
            bad = [k for k in ("state", "data", "config") if stored.get(k) != got[k]]
            if bad:
                raise CheckpointError(f"checksum mismatch in {', '.join(bad)}")
        else:
            logging.warning(
                "checkpoint %s has no stored checksum (written before checksums were kept): "
                "restored unverified",
                self.directory / str(step),
            )
        return out.state, decode_data_state(out.data), dict(out.config)

    def _quarantine(self, step: int) -> epath.Path:
        """Moves a bad step out of the manager's folder (kept for inspection)."""
        target = self.directory.parent / f"{self.directory.name}_corrupt" / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(os.fspath(target))
            shutil.move(os.fspath(self.directory / str(step)), os.fspath(target))
        multihost_utils.sync_global_devices(f"quarantine_{step}")
        self._manager.reload()
        return target

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def restore_or_init(
    ckpt: Checkpointer,
    abstract_state: Any,
    init_fn: Callable[[], Any],
    workdir: str | os.PathLike,
) -> tuple[Any, Any]:
    """Resumes from the newest good checkpoint; starts fresh only where no run exists.

    Args:
      ckpt: the run's checkpointer.
      abstract_state: as :meth:`Checkpointer.restore`.
      init_fn: makes the initial train state.
      workdir: the run folder; a ``summary.json`` there means a run exists.

    Returns:
      ``(state, data_state)``; ``data_state`` is None for a fresh start.

    Raises:
      CheckpointError: every checkpoint is unusable, or the workdir holds a run
        (``summary.json``) but no checkpoint: starting over would silently replace it.
    """
    if ckpt.all_steps():
        state, data_state, _ = ckpt.restore(None, abstract_state)
        logging.info("resumed from step %d", ckpt.restored_step)
        return state, data_state
    if (Path(workdir) / "summary.json").is_file():
        raise CheckpointError(
            f"{workdir} holds a run (summary.json) but {ckpt.directory} has no checkpoint to "
            "resume: not starting from scratch over it; move the workdir away to start afresh"
        )
    return init_fn(), None


def export_step(directory: str | os.PathLike) -> int | None:
    """The training step recorded in an encoder export's ``export.json`` (None when
    unreadable or absent)."""
    try:
        step = json.loads((Path(directory) / _EXPORT).read_text()).get("step")
    except (OSError, json.JSONDecodeError):
        return None
    return step


def save_encoder(
    directory: str | os.PathLike,
    params: Any,
    model_config: Mapping[str, Any],
    *,
    step: int | None = None,
) -> epath.Path:
    """Exports backbone params plus the model config that rebuilds the ViT.

    The export is written to a staging folder beside `directory` and then swapped in,
    so an existing export (a re-run, an extended run) is replaced whole or not at all.

    Args:
      directory: target folder (created; an existing export there is replaced).
      params: the ViT's ``params`` collection (e.g. the teacher backbone).
      model_config: JSON-safe dict with at least ``variant`` (e.g. ``config.model``).
      step: the training step of these params, recorded in ``export.json``.

    Returns:
      The encoder folder.
    """
    if "variant" not in model_config:
        raise ValueError("model_config must name the ViT 'variant'")
    root = epath.Path(os.fspath(directory)).absolute()
    staging = root.parent / f".{root.name}.staging"
    old = root.parent / f".{root.name}.old"
    checksum = params_checksum(params)
    if jax.process_index() == 0:
        root.parent.mkdir(parents=True, exist_ok=True)
        for stale in (staging, old):  # left by a killed export
            if stale.exists():
                shutil.rmtree(os.fspath(stale))
        staging.mkdir()
    multihost_utils.sync_global_devices("save_encoder_staging")
    with ocp.Checkpointer(_pytree_handler()) as ckptr:
        ckptr.save(staging / "params", args=ocp.args.PyTreeSave(params))
    if jax.process_index() == 0:
        (staging / _MODEL_CONFIG).write_text(
            json.dumps(dict(model_config), indent=2, sort_keys=True)
        )
        export = {"params_checksum": checksum, "step": None if step is None else int(step)}
        (staging / _EXPORT).write_text(json.dumps(export, indent=2, sort_keys=True))
        if root.exists():
            root.replace(old)
        staging.replace(root)
        if old.exists():
            shutil.rmtree(os.fspath(old))
    multihost_utils.sync_global_devices("save_encoder")
    return root


def load_encoder(directory: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Loads an encoder exported by :func:`save_encoder`, checked against its checksum.

    Args:
      directory: the encoder folder, or a pretraining workdir that contains ``encoder/``.

    Returns:
      ``(params, model_config)``: params as a pytree of host numpy arrays (float32), the
      model config as a dict (``variant``, ``dtype``, ...).

    Raises:
      FileNotFoundError: if no encoder export is found there.
      CheckpointError: the params do not match the export's ``params_checksum``.
    """
    root = epath.Path(os.fspath(directory)).absolute()
    if not (root / _MODEL_CONFIG).exists() and (root / ENCODER_DIR / _MODEL_CONFIG).exists():
        root = root / ENCODER_DIR
    if not (root / _MODEL_CONFIG).exists() or not (root / "params").exists():
        raise FileNotFoundError(
            f"no encoder export (params/ + {_MODEL_CONFIG}) in {directory}: pretrain first "
            "(tools/pretrain.py --workdir ...) or give the pretraining workdir"
        )
    model_config = json.loads((root / _MODEL_CONFIG).read_text())
    _drop_closed_loop_noise()  # a damaged export is one error line, not hundreds
    with ocp.Checkpointer(_pytree_handler()) as ckptr:
        try:
            meta = ckptr.metadata(root / "params")
            tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            params = ckptr.restore(
                root / "params", args=ocp.args.PyTreeRestore(restore_args=restore_args)
            )
        except Exception as e:  # Orbax / TensorStore raise many types on damaged files
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise CheckpointError(
                f"encoder export {root} is unreadable ({reason}): re-export it (re-run the "
                "pretraining with the same workdir)"
            ) from e
    if (root / _EXPORT).exists():
        stored = json.loads((root / _EXPORT).read_text()).get("params_checksum")
        if stored != params_checksum(params):
            raise CheckpointError(
                f"encoder export {root}: params do not match export.json's checksum "
                "(damaged): re-export it (re-run the pretraining with the same workdir)"
            )
    return params, model_config
