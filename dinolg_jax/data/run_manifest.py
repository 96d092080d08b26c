"""The dataset a training run reads: the configured manifest, or a phantom made for it.

Every trainer (``train/pretrain.py``, ``eval/probe.py``, ``train/segment.py``) starts
with :func:`prepare_manifest`: ``config.data.manifest`` when set, else a small phantom
release (``config.phantom``'s sizes) converted once under the run's workdir, so a run
without data still runs end to end.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils


def prepare_manifest(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """Path of the manifest to train on; makes a small phantom when none is configured.

    With ``config.data.manifest`` empty, a phantom release with ``config.phantom``'s
    sizes is written to ``workdir/phantom/release`` and converted to
    ``workdir/phantom/data`` (once; later runs reuse it). Only process 0 writes.

    Raises:
      FileNotFoundError: the configured manifest does not exist.
    """
    if config.data.manifest:
        path = Path(config.data.manifest)
        if path.is_dir():
            path = path / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"config.data.manifest: no manifest at {path}")
        return path
    root = Path(workdir) / "phantom"
    manifest = root / "data" / "manifest.json"
    if jax.process_index() == 0 and not manifest.is_file():
        from dinolg_jax.data import convert
        from dinolg_jax.phantom import coca_release

        ph = config.phantom
        logging.info("no data configured: making a phantom under %s", root)
        coca_release.make_release(
            root / "release",
            n_gated=int(ph.n_gated),
            n_nongated=int(ph.n_nongated),
            seed=int(ph.seed),
            size=int(ph.size),
        )
        convert.convert_release(root / "release", root / "data", seed=int(ph.seed), progress=False)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("prepare_manifest")
    if not manifest.is_file():
        raise FileNotFoundError(f"phantom conversion did not produce {manifest}")
    return manifest
