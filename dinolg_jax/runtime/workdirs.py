"""What kind of training workdir a path is, checked from its files before anything loads.

The tools take workdirs of three kinds, told apart by the files their runs write:

- ``pretrain`` (``tools/pretrain.py``): ``encoder/model_config.json`` (or the path is
  the ``encoder/`` export itself, or an imported one: ``model_config.json`` + ``params``).
- ``probe`` (``tools/probe.py``): ``probe/probe_config.json``.
- ``segment`` (``tools/segment.py``): ``config.json`` naming a ``model.name`` and a
  ``loss``, and ``checkpoints/``.

`require` raises `cli.UsageError` with what to do: train the missing run first, or give
the workdir of the right kind (naming the kind the path is). `check_infer_config` and
`check_score_study` are the up-front checks of ``tools/infer.py`` and
``tools/score_study.py``: every path and mode, before any model loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dinolg_jax.runtime.cli import UsageError, require_choice, require_dir

KINDS = ("pretrain", "probe", "segment")
_TRAIN = {
    "pretrain": "tools/pretrain.py --config configs/dinolg.py:runlocal --workdir {path}",
    "probe": "tools/probe.py --config configs/probe.py:linear,runlocal --workdir {path} "
    "--config.encoder=PRETRAIN_WORKDIR",
    "segment": "tools/segment.py --config configs/segment.py:runlocal --workdir {path}",
}
MODES = ("gated", "unet_only", "both")
SOURCE_KINDS = ("manifest", "release", "dicom", "nifti")


def _config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def kinds_of(path: str | os.PathLike) -> list[str]:
    """The kinds of run whose outputs `path` holds (empty: none, or not a folder)."""
    p = Path(path)
    found = []
    if (p / "encoder" / "model_config.json").is_file() or (
        (p / "model_config.json").is_file() and (p / "params").exists()
    ):
        found.append("pretrain")
    if (p / "probe" / "probe_config.json").is_file() or (p / "probe_config.json").is_file():
        found.append("probe")
    config = _config(p)  # any run's config.json (or {}): probed for a segmentation run's keys
    model = config.get("model")
    if isinstance(model, dict) and "name" in model and "loss" in config:
        if (p / "checkpoints").is_dir():
            found.append("segment")
    return found


def require(path: str | os.PathLike | None, kind: str, flag: str) -> Path:
    """`path` if it holds a finished-enough run of `kind`, else a `UsageError` saying why.

    Args:
      path: the workdir given.
      kind: one of `KINDS`.
      flag: the flag or config key that gave it, for the message.
    """
    train = _TRAIN[kind].format(path=path or "WORKDIR")
    if not path:
        raise UsageError(f"{flag} is required: a {kind} workdir (made by {train})")
    p = Path(path)
    if not p.is_dir():
        what = "is a file, not a workdir" if p.exists() else "does not exist"
        raise UsageError(f"{flag}={p} {what}: train it first ({train})")
    found = kinds_of(p)
    if kind in found:
        return p
    if found:
        raise UsageError(
            f"{flag}={p} is a {' and '.join(found)} workdir, not a {kind} workdir: give the "
            f"workdir of {_TRAIN[kind].split(' ')[0]}"
        )
    raise UsageError(f"{flag}={p} holds no {kind} run: train it first ({train})")


def require_manifest(path: str | os.PathLike | None, flag: str) -> Path | None:
    """A configured manifest (file or folder) that exists; None when none is configured."""
    if not path:
        return None
    p = Path(path)
    if p.is_file() or (p / "manifest.json").is_file():
        return p
    raise UsageError(
        f"{flag}={p}: no manifest.json there (convert a release with tools/convert_coca.py)"
    )


def check_infer_config(config: Any) -> None:
    """``tools/infer.py``'s checks: mode, source, out_dir and the workdirs it needs."""
    require_choice(config.mode, MODES, "--config.mode")
    require_choice(config.source.kind, SOURCE_KINDS, "--config.source.kind")
    if not config.source.path:
        raise UsageError("--config.source.path is required")
    if config.source.kind == "manifest":
        require_manifest(config.source.path, "--config.source.path")
    else:
        require_dir(config.source.path, "--config.source.path")
    if not config.out_dir:
        raise UsageError("--config.out_dir is required (where results are written)")
    require(config.segmenter_workdir, "segment", "--config.segmenter_workdir")
    if config.mode != "unet_only":
        require(config.probe_workdir, "probe", "--config.probe_workdir")
        if config.encoder_workdir:
            require(config.encoder_workdir, "pretrain", "--config.encoder_workdir")


def check_score_study(
    folder: str | os.PathLike, probe: str | None, segmenter: str | None, mode: str
) -> None:
    """``tools/score_study.py``'s checks: a folder with DICOM files and the workdirs."""
    p = require_dir(folder, "DICOM_DIR")
    if not any(_is_dicom(f) for f in p.rglob("*") if f.is_file()):
        raise UsageError(f"DICOM_DIR={p} holds no DICOM file (none starts with the DICM marker)")
    require(segmenter, "segment", "--segmenter_workdir")  # --workdir W: W/segment
    if mode == "gated":
        require(probe, "probe", "--probe_workdir")  # --workdir W: W/probe


def _is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` at byte 128."""
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False
