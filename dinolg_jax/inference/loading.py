"""Builds the pipeline's models from training workdirs (the trained encoder, probe, U-Net).

* Segmenter: ``WORKDIR/config.json`` (the resolved ``configs/segment*.py``) rebuilds the
  model through ``train.segment.build_model``; its params come from the latest
  ``WORKDIR/checkpoints/<step>/state`` (only the ``params`` subtree is read, as host
  numpy arrays, whatever the optimiser was).
* Gate: ``eval.probe``'s export (encoder + probe params and the threshold chosen on
  val), see :func:`load_gate`.

Input preparation is the training pipeline's own: ``data.transforms.normalize_hu`` with
the workdir's ``data.hu_window`` and the bilinear ``transforms.resized_crops`` resize of
``data.pipeline.SliceExample``. The gate sees what the probe was trained on: every slice,
whatever its stored size, is resized to the probe's **input size** (the side of the
slices its features were extracted from), recorded as ``input_size`` in the probe export
by ``eval/probe.py``; for exports written before that field, it is read from what the
workdir already holds (:func:`gate_input_size`: ``eval_size`` when set, else the record
size of the manifest the probe was trained on). Without it a 512 px study fed to a probe
trained on 64 px records gave p ~ 0.44 on every slice, so the gate flagged them all.
A segmenter finds lesions only at the scale it learnt: a U-Net trained on 64 px slices
scored a 512 px study 0.0 (true 65.0) when fed the 512 px slices directly.

Resolution (``inference/resolution.py``): each model also gets the in-plane grid it
learnt at (``data.split_grid``: the median, min and max pixel spacing of the training
split's studies, one record each, and the record size, scaled when features or slices
were resized to ``eval_size``), read from the ``summary.json`` its training wrote
(:func:`recorded_grid`), or from its training manifest (:func:`training_grid`) for
workdirs written before that was recorded, so a study of another spacing or size is
resampled to it instead of refused. Only a model whose training spacing cannot be read
(no recorded grid, and its manifest is gone) still refuses a study of another size;
``model_spacing_mm`` (``tools/score_study.py --model_spacing_mm``) then states the
spacing and forces the resampling.

What a workdir holds (``config.json``, ``probe_config.json``, the encoder's
``model_config.json``, ``summary.json``) is read with ``.get`` and a fallback, each one
commented: workdirs written by older versions (or by hand) may lack a key. The inference
config itself (``configs/infer.py``) is read directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import split_grid as split_grid_lib
from dinolg_jax.data import transforms
from dinolg_jax.inference.resolution import ModelGrid
from dinolg_jax.inference.system import SliceModel
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime.json_file import read_json_dict


class WorkdirError(FileNotFoundError):
    """A workdir without the files a model needs (config.json, a checkpoint, an export)."""


def make_prepare(hu_window: Sequence[float], size: int = 0):
    """The training pipeline's slice preparation: ``hu [B, H, W] -> float32 [B, s, s, 1]``.

    Args:
      hu_window: (lo, hi) HU mapped to [-1, 1] (``transforms.normalize_hu``).
      size: 0 keeps the slice size; else bilinear resize of the whole slice to size x size.
    """
    window = tuple(float(v) for v in hu_window)
    size = int(size)

    def prepare(hu: np.ndarray) -> np.ndarray:
        x = transforms.normalize_hu(hu, window)
        if size and x.shape[1:] != (size, size):
            h, w = x.shape[1:]
            x = np.stack([transforms.resized_crops(im, [(0, 0, h, w)], size)[0] for im in x])
        return x[..., None].astype(np.float32)

    return prepare


def gate_input_size(
    probe_workdir: str | os.PathLike, probe_config: dict[str, Any], run_config: Any
) -> int:
    """The slice side the probe's features were extracted at (see the module docstring).

    Order: the export's ``input_size``; its ``eval_size`` when non-zero; the record size
    of the manifest in the workdir's ``config.json`` (``data.manifest``, or the phantom
    that ``eval/probe.py`` makes under the workdir when it is empty).

    Raises:
      WorkdirError: none of these is available.
    """
    for key in ("input_size", "eval_size"):  # old exports' probe_config.json lack input_size
        if int(probe_config.get(key, 0) or 0) > 0:
            return int(probe_config[key])
    split = train_split(run_config)
    manifest = training_manifest(probe_workdir, run_config)
    if not manifest.is_file():
        raise WorkdirError(
            f"{probe_workdir}: cannot tell the slice size the probe was trained at (no "
            f"input_size in its export, no manifest at {manifest}); re-run eval/probe.py"
        )
    h, w = manifest_lib.load(manifest).slice_shape(split)
    if h != w:
        raise WorkdirError(f"{manifest}: records of {h} x {w} px; the gate needs square slices")
    return h


def training_manifest(workdir: str | os.PathLike, run_config: Any) -> Path:
    """Path of the manifest a training workdir read (``data.manifest``, or the phantom
    that ``phantom.run_manifest.prepare_manifest`` makes under the workdir when it is
    empty); it may no longer exist."""
    data = run_config.get("data", {}) or {}  # old workdirs' config.json may lack it
    manifest = Path(data.get("manifest") or Path(workdir) / "phantom" / "data")
    return manifest / "manifest.json" if manifest.is_dir() else manifest


def segmenter_input_shape(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict
) -> tuple[int, int] | None:
    """(H, W) of the slices a segmenter workdir was trained on, or None when unknown.

    Order: ``input_shape`` in its ``summary.json`` (``train/segment.py`` writes it); its
    ``data.eval_size`` when non-zero; the record size of the manifest it trained on.
    """
    # old summaries lack input_shape; one cut short by a crash is read as none
    shape = (read_json_dict(Path(workdir) / "summary.json") or {}).get("input_shape")
    if shape:
        return int(shape[0]), int(shape[1])
    size = int(config.data.get("eval_size", 0) or 0)  # old workdirs' config.json may lack it
    if size:
        return size, size
    manifest = training_manifest(workdir, config)
    if not manifest.is_file():
        return None
    return manifest_lib.load(manifest).slice_shape(train_split(config))


def training_grid(
    manifest_path: str | os.PathLike,
    split: str,
    *,
    input_size: int = 0,
    resizes: bool = False,
) -> ModelGrid:
    """The in-plane grid a model trained on ``split`` of a manifest learnt at
    (``data.split_grid.split_grid``: the median, min and max spacing over the split's
    studies; the record size, or ``input_size`` x ``input_size`` with the spacings scaled
    when the model saw the records resized to it).

    Args:
      manifest_path: the training manifest (file or folder).
      split: the split the model was fitted on.
      input_size: the side the records were resized to (0: not resized).
      resizes: the model's own preparation resizes any slice to that size (the gate).

    Raises:
      WorkdirError: no manifest.
      ManifestError: its split has no studies.
    """
    path = Path(manifest_path)
    if not (path.is_file() or (path / "manifest.json").is_file()):
        raise WorkdirError(f"no training manifest at {path}")
    grid = split_grid_lib.split_grid(path, split, input_size=input_size)
    return _model_grid(grid, resizes, f"{grid.studies} {split} studies of {path}")


def _model_grid(grid: split_grid_lib.SplitGrid, resizes: bool, origin: str) -> ModelGrid:
    ranges = tuple(zip(grid.min_mm, grid.max_mm, strict=True))
    return ModelGrid(grid.median_mm, grid.shape, ranges, resizes=resizes, origin=origin)  # type: ignore[arg-type]


def recorded_grid(workdir: str | os.PathLike, *, resizes: bool = False) -> ModelGrid | None:
    """The grid a training workdir's ``summary.json`` recorded (``pixel_spacing_mm`` and
    ``slice_size``, written by ``train/segment.py`` and ``eval/probe.py``), or None when
    it has none (a summary written before they were recorded, or none readable)."""
    path = Path(workdir) / "summary.json"
    grid = split_grid_lib.SplitGrid.from_summary(read_json_dict(path) or {})
    if grid is None:
        return None
    return _model_grid(grid, resizes, f"{grid.studies} {grid.split} studies, {path}")


def forced_grid(
    model_spacing_mm: float, shape: tuple[int, int] | None, what: str, *, resizes: bool = False
) -> ModelGrid:
    """The grid a person states for a model whose training spacing is unknown.

    Raises:
      WorkdirError: its slice size is unknown too.
    """
    if shape is None:
        raise WorkdirError(
            f"{what}: --model_spacing_mm needs the slice size it was trained at, and none is "
            "recorded (no summary.json input_shape, no eval_size, no manifest)"
        )
    spacing = float(model_spacing_mm)
    if spacing <= 0:
        raise ValueError(f"--model_spacing_mm must be positive, got {model_spacing_mm}")
    return ModelGrid((spacing, spacing), shape, resizes=resizes, origin="--model_spacing_mm")


def _grid_or_none(make, what: str) -> ModelGrid | None:
    """``make()``, or None (logged) when the training manifest cannot be read."""
    try:
        return make()
    except (WorkdirError, manifest_lib.ManifestError, OSError) as e:
        logging.warning("%s: training pixel spacing unknown (%s)", what, e)
        return None


def segmenter_grid(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    model_spacing_mm: float | None = None,
) -> ModelGrid | None:
    """The grid a segmenter workdir learnt at: ``model_spacing_mm`` when given (it
    overrides), the one its ``summary.json`` recorded (:func:`recorded_grid`), else
    :func:`training_grid` of its manifest; None when none is known."""
    shape = segmenter_input_shape(workdir, config)
    if model_spacing_mm:
        return forced_grid(model_spacing_mm, shape, f"segmenter {workdir}")
    recorded = recorded_grid(workdir)
    if recorded is not None:
        return recorded
    size = int(config.data.get("eval_size", 0) or 0)  # old workdirs' config.json may lack it
    manifest = training_manifest(workdir, config)
    return _grid_or_none(
        lambda: training_grid(manifest, train_split(config), input_size=size),
        f"segmenter {workdir}",
    )


def gate_grid(
    probe_workdir: str | os.PathLike,
    run_config: Any,
    input_size: int,
    model_spacing_mm: float | None = None,
) -> ModelGrid | None:
    """The grid a probe's features were extracted at: ``model_spacing_mm`` when given,
    the one its ``summary.json`` recorded (:func:`recorded_grid`) when of ``input_size``,
    else its training manifest's spacing scaled to ``input_size`` (the gate resizes every
    slice to it); None when none is known."""
    if model_spacing_mm:
        shape = (int(input_size), int(input_size))
        return forced_grid(model_spacing_mm, shape, f"probe {probe_workdir}", resizes=True)
    recorded = recorded_grid(probe_workdir, resizes=True)
    if recorded is not None and recorded.shape == (int(input_size), int(input_size)):
        return recorded
    manifest = training_manifest(probe_workdir, run_config)
    return _grid_or_none(
        lambda: training_grid(
            manifest, train_split(run_config), input_size=input_size, resizes=True
        ),
        f"probe {probe_workdir}",
    )


def train_split(run_config: Any) -> str:
    """The split a training workdir's model was fitted on, from its ``config.json``:
    ``splits.train``. Workdirs written before the one ``splits`` block kept it as
    ``eval.train_split`` (probe) or ``data.train_split`` (segmenter), hence the ``.get``s."""
    splits = run_config.get("splits") or {}
    if "train" in splits:
        return str(splits["train"])
    for section in ("eval", "data"):
        old = (run_config.get(section) or {}).get("train_split")
        if old:
            return str(old)
    return "train"


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """``WORKDIR/config.json`` as a ConfigDict."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise WorkdirError(f"no config.json in {workdir}")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_params(workdir: str | os.PathLike, step: int | None = None) -> tuple[Any, int]:
    """The ``params`` subtree of a checkpointed train state, as host numpy arrays.

    Args:
      workdir: a training workdir (``checkpoints/<step>/state``).
      step: which step; None = the latest.

    Returns:
      (params, step).

    Raises:
      WorkdirError: no checkpoint, no state at that step, or no ``params`` in it.
      runtime.checkpoint.CheckpointError: the params differ from the ``params_checksum``
        stored with the step (a corrupt or half-copied checkpoint is never scored with;
        an older step is not taken in its place either, since it is another model). A
        step saved without checksums is restored with a warning that it is unverified.
    """
    root = Path(workdir).absolute() / ckpt_lib.CHECKPOINT_DIR
    steps = sorted(int(p.name) for p in root.glob("*") if p.name.isdigit()) if root.is_dir() else []
    if not steps:
        raise WorkdirError(f"no checkpoint under {root}")
    step = steps[-1] if step is None else int(step)
    path = root / str(step) / "state"
    if not path.is_dir():
        raise WorkdirError(f"no checkpoint state at {path}")
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
        if "params" not in tree:
            raise WorkdirError(f"checkpoint {path} has no 'params' (keys {sorted(tree)})")
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        state = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    stored = (ckpt_lib.stored_checksums(root, step) or {}).get("params")
    if stored is None:
        logging.warning("checkpoint %s stored no params checksum: restored unverified", path)
    elif ckpt_lib.params_checksum(state["params"]) != stored:
        raise ckpt_lib.CheckpointError(
            f"checkpoint {path}: its params do not match the checksum stored with them "
            "(corrupt or partly copied); copy the workdir again or retrain"
        )
    return state["params"], step


def load_segmenter(
    workdir: str | os.PathLike,
    slice_size: int | None = None,
    *,
    model_spacing_mm: float | None = None,
) -> SliceModel:
    """The trained segmenter of a ``tools/segment.py`` workdir as a :class:`SliceModel`.

    Args:
      workdir: the segmentation workdir.
      slice_size: side of the slices it will see, to check ``data.eval_size`` against
        when its training grid is unknown.
      model_spacing_mm: the pixel spacing (mm) it was trained at, when its workdir
        cannot tell (:func:`segmenter_grid`).

    Raises:
      WorkdirError: missing config or checkpoint.
      ValueError: a workdir trained on resized slices whose training grid is unknown.
    """
    from dinolg_jax.train import segment

    config = read_config(workdir)
    grid = segmenter_grid(workdir, config, model_spacing_mm)
    size = int(config.data.get("eval_size", 0) or 0)  # old workdirs' config.json may lack it
    if grid is None and size and (slice_size is None or size != int(slice_size)):
        raise ValueError(
            f"segmenter in {workdir} was trained on slices resized to {size} and its training "
            "spacing is unknown; pass --model_spacing_mm (the spacing of those resized slices)"
        )
    model, _ = segment.build_model(config)  # vit_unet: reads the variant from config.encoder
    params, step = restore_params(workdir)

    def apply(p, x):
        return model.apply({"params": p}, x, train=False)

    name = f"{config.model.name}@{step}"
    shape = segmenter_input_shape(workdir, config)
    return SliceModel(apply, params, make_prepare(config.data.hu_window), name, shape, grid)


def load_gate(
    probe_workdir: str | os.PathLike,
    encoder: str | os.PathLike | None = None,
    *,
    model_spacing_mm: float | None = None,
) -> tuple[SliceModel, float]:
    """The gate of a ``eval/probe.py`` workdir and the threshold it chose on val.

    Args:
      probe_workdir: the probe workdir (``probe/`` export + ``config.json``).
      encoder: the encoder (pretraining workdir or export); None = the probe config's
        ``encoder``.
      model_spacing_mm: the pixel spacing (mm) of its training slices at the size the
        features were extracted at, when the workdir cannot tell (:func:`gate_grid`).

    Returns:
      (gate, threshold).

    Raises:
      FileNotFoundError: no probe export or encoder.
      ValueError: the encoder is not the one the probe was trained on (checksums differ).
    """
    from dinolg_jax.eval import probe as probe_lib

    # probe_config.json, config.json and model_config.json as an older run wrote them:
    # the keys read with .get below may be missing there.
    _, probe_params, pcfg = probe_lib.load_probe(probe_workdir)
    run_config = read_config(probe_workdir)
    encoder = encoder or run_config.get("encoder", "")
    if not encoder:
        raise WorkdirError(f"{probe_workdir}/config.json names no encoder")
    enc_params, enc_cfg = ckpt_lib.load_encoder(encoder)
    checksum = ckpt_lib.params_checksum(enc_params)
    if pcfg.get("encoder_checksum") and pcfg["encoder_checksum"] != checksum:
        raise ValueError(
            f"encoder {encoder} is not the one the probe in {probe_workdir} was trained on "
            "(params checksums differ)"
        )
    input_size = gate_input_size(probe_workdir, pcfg, run_config)
    gate = gate_from_parts(
        enc_cfg,
        enc_params,
        pcfg["name"],
        dict(pcfg.get("kwargs", {})),
        probe_params,
        n_last_blocks=int(pcfg["n_last_blocks"]),
        token_pool=int(pcfg["token_pool"]),
        pooling=str(pcfg.get("pooling", "cls_mean")),
        hu_window=pcfg["hu_window"],
        eval_size=input_size,
        dtype=run_config.get("features", {}).get("dtype") or None,
        name=f"{enc_cfg.get('variant', '?')}+{pcfg['name']}",
    )
    grid = gate_grid(probe_workdir, run_config, input_size, model_spacing_mm)
    return dataclasses.replace(gate, grid=grid), float(pcfg["threshold"])


def build_pipeline(
    config: ml_collections.ConfigDict,
    mesh,
    *,
    need_gate: bool = True,
    model_spacing_mm: float | None = None,
):
    """A :class:`~dinolg_jax.inference.system.CacPipeline` from a ``configs/infer.py`` config.

    Args:
      config: ``probe_workdir``, ``segmenter_workdir``, ``threshold`` (-1: the probe's),
        ``batch_size``, ``seg_batch_size``, ``scoring``; ``model_spacing_mm`` when the
        config has it (0: read from the workdirs).
      mesh: the device mesh.
      need_gate: load the gate (False for a U-Net-only run, which needs no probe).
      model_spacing_mm: the pixel spacing (mm) both models were trained at, for workdirs
        that cannot tell; overrides the config's.
    """
    from dinolg_jax.inference.system import CacPipeline

    if not config.segmenter_workdir:
        raise ValueError("config.segmenter_workdir is empty")
    spacing = model_spacing_mm or float(config.get("model_spacing_mm", 0) or 0) or None
    segmenter = load_segmenter(config.segmenter_workdir, model_spacing_mm=spacing)
    gate, threshold = None, 0.5
    if need_gate:
        if not config.probe_workdir:
            raise ValueError("the gated mode needs config.probe_workdir")
        gate, threshold = load_gate(
            config.probe_workdir, config.encoder_workdir or None, model_spacing_mm=spacing
        )
    if float(config.threshold) >= 0.0:
        threshold = float(config.threshold)
    return CacPipeline(
        segmenter,
        mesh,
        gate=gate,
        threshold=threshold,
        batch_size=int(config.batch_size),
        seg_batch_size=int(config.seg_batch_size) or None,
        scoring=dict(config.scoring),
    )


def gate_from_parts(
    encoder_config: dict[str, Any],
    encoder_params: Any,
    probe_name: str,
    probe_kwargs: dict[str, Any],
    probe_params: Any,
    *,
    n_last_blocks: int,
    token_pool: int,
    hu_window: Sequence[float],
    pooling: str = "cls_mean",
    eval_size: int = 0,
    dtype: str | None = None,
    name: str = "",
) -> SliceModel:
    """The gate as one :class:`SliceModel`: frozen encoder -> probe feature -> p(calcium).

    The feature is computed by ``eval.features.pooled_and_tokens`` (the function the
    probe's training features were extracted with), so the gate sees exactly what the
    probe was trained on; the probe's logit goes through a sigmoid.

    Args:
      encoder_config: the encoder export's model config (``variant``, ...).
      encoder_params: the encoder's params.
      probe_name: "linear" or "transformer" (``models.probes.PROBES``).
      probe_kwargs: the probe's dataclass fields.
      probe_params: the probe's params.
      n_last_blocks: CLS tokens of the last n blocks in the pooled feature.
      token_pool: patch-token pooling of the transformer probe's input.
      pooling: the pooled feature's kind (``eval.features.POOLINGS``).
      hu_window: the feature extraction's HU window.
      eval_size: the side of the slices the features were extracted from: every slice is
        resized to it (0: keep the stored size, only right when it is the trained size).
      dtype: encoder compute dtype (None: the export's).
      name: for logs.
    """
    from dinolg_jax.eval.features import encoder_model, pooled_and_tokens
    from dinolg_jax.models.probes import PROBE_INPUTS, build_probe

    vit = encoder_model(encoder_config, n_last_blocks, dtype or None)
    probe = build_probe(probe_name, **probe_kwargs)
    use_pooled = PROBE_INPUTS[probe_name] == "pooled"

    def apply(params, x):
        pooled, tokens = pooled_and_tokens(vit, params["encoder"], x, token_pool, pooling)
        logits = probe.apply({"params": params["probe"]}, pooled if use_pooled else tokens)
        return jax.nn.sigmoid(logits)

    params = {"encoder": encoder_params, "probe": probe_params}
    return SliceModel(apply, params, make_prepare(hu_window, eval_size), name or probe_name)
