"""A pretraining run's encoder for use outside JAX: safetensors, config.json, model card.

:func:`export_encoder` reads a pretraining workdir (its ``encoder/`` export, written by
``runtime.checkpoint.save_encoder``, plus the run's ``config.json`` and ``summary.json``)
and writes to an output folder::

    model.safetensors   the teacher backbone, official DINO / timm ViT names and layouts
                        (``models.torch_export``), float32
    config.json         the architecture, the input the encoder expects (one channel, HU
                        window and normalisation, image size) and the checksums
    README.md           the model card: data, recipe, steps, the monitors' last values,
                        the checksums and the lines that load it in PyTorch / timm

Nothing here depends on the time or the machine: the same workdir gives the same bytes.
Paths enter only by their last component (the run's and the manifest's folder names).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dinolg_jax.models import torch_export
from dinolg_jax.models.vit import LN_EPS, MLP_RATIO, decode_variant
from dinolg_jax.runtime import checkpoint

SAFETENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
# The monitors of a pretraining run (summary.json "metrics"), in the card's order.
MONITORS = (
    ("loss", "DINO loss"),
    ("teacher_entropy", "teacher entropy (per sample, nats)"),
    ("teacher_batch_entropy", "teacher batch entropy (nats)"),
    ("teacher_kl", "teacher KL (batch - sample, nats)"),
    ("online_knn_roc_auc", "online kNN ROC-AUC (val)"),
    ("init_knn_roc_auc", "online kNN ROC-AUC (val) of the random init"),
    ("online_probe_roc_auc", "online probe ROC-AUC (val)"),
    ("init_probe_roc_auc", "online probe ROC-AUC (val) of the random init"),
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _run_files(workdir: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(the run's folder, its config.json, its summary.json); empty dicts when absent."""
    run = workdir
    if not (run / CONFIG_FILE).exists() and (run.parent / checkpoint.ENCODER_DIR) == run:
        run = run.parent  # the encoder/ folder itself was given
    return run, _read_json(run / CONFIG_FILE), _read_json(run / "summary.json")


def input_spec(hu_window: Any) -> dict[str, Any]:
    """What the encoder expects as input, from the run's HU window (None: unknown).

    Returns:
      ``{"channels": 1, "layout", "hu_window": [lo, hi], "normalisation", "scale",
      "offset"}``: ``x = clip(HU, lo, hi) * scale + offset`` maps the window onto [-1, 1].
    """
    spec: dict[str, Any] = {
        "channels": 1,
        "layout": "[B, 1, H, W] float32 (PyTorch); H, W multiples of patch_size",
        "normalisation": "x = 2 * (clip(HU, lo, hi) - lo) / (hi - lo) - 1",
    }
    if hu_window is None:
        return spec | {"hu_window": None, "scale": None, "offset": None}
    lo, hi = (float(v) for v in hu_window)
    return spec | {
        "hu_window": [lo, hi],
        "scale": 2.0 / (hi - lo),
        "offset": -2.0 * lo / (hi - lo) - 1.0,
    }


def release_config(
    model_config: Mapping[str, Any],
    ref_image_size: int,
    run_config: Mapping[str, Any],
    *,
    step: int | None,
    params_checksum: str,
    safetensors_sha256: str,
) -> dict[str, Any]:
    """The export's ``config.json``: architecture, expected input, origin and checksums."""
    variant = str(model_config["variant"])
    spec = decode_variant(variant)
    data = run_config.get("data") or {}
    crops = None
    if data:
        crops = {"global": int(data["global_size"]), "local": int(data["local_size"])}
    return {
        "format": "ViT state dict with official DINO / timm names (safetensors, float32)",
        "variant": variant,
        "patch_size": spec.patch,
        "embed_dim": spec.width,
        "depth": spec.depth,
        "num_heads": spec.heads,
        "mlp_ratio": MLP_RATIO,
        "qkv_bias": True,
        "layer_norm_eps": LN_EPS,
        "activation": "gelu (exact, erf)",
        "class_token": True,
        "in_chans": 1,
        "img_size": ref_image_size,
        "position_interpolation": (
            "other sizes: the patch part of pos_embed resized with torch bicubic "
            "(a = -0.75, align_corners=False, no antialiasing) to the new grid"
        ),
        "trained_crop_sizes": crops,
        "input": input_spec(data.get("hu_window")),
        "output": "CLS token after the final LayerNorm [B, D]; all tokens [B, 1 + N, D]",
        "timm_model": torch_export.TIMM_NAMES.get(variant),
        "step": step,
        "params_checksum": params_checksum,
        "safetensors_sha256": safetensors_sha256,
    }


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _crops_line(crops: Mapping[str, int] | None) -> str:
    if not crops:
        return "Training crop sizes unknown."
    return f"Pretrained on {crops['global']} px global and {crops['local']} px local crops."


def _data_lines(run_config: Mapping[str, Any]) -> list[str]:
    data = run_config.get("data") or {}
    manifest = str(data.get("manifest") or "")
    if manifest:
        name = Path(manifest).name
        name = Path(manifest).parent.name if name == "manifest.json" else name
        return [f"- dataset `{name}` (a converted manifest), its `pretrain` split"]
    ph = run_config.get("phantom") or {}
    if not run_config:
        return ["- unknown (the export has no pretraining run beside it)"]
    return [
        f"- the synthetic phantom (no CT of any person): {ph.get('n_gated')} gated and "
        f"{ph.get('n_nongated')} non-gated studies, {ph.get('size')} px slices, seed "
        f"{ph.get('seed')}; its `pretrain` split"
    ]


def _recipe_lines(run_config: Mapping[str, Any]) -> list[str]:
    if not run_config:
        return ["- unknown"]
    d, o, k = run_config["data"], run_config["optim"], run_config["dino"]
    guided = int(d["n_local_guided"])
    return [
        f"- {'DINO-LG (label-guided local crops)' if guided else 'DINO (no guided crops)'}, "
        f"seed {run_config.get('seed')}",
        f"- crops: {d['n_global']} global {d['global_size']} px, {d['n_local_random']} random "
        f"+ {guided} guided local {d['local_size']} px; batch {d['batch_size']}",
        f"- {_fmt(run_config.get('num_epochs'))} epochs; AdamW lr {_fmt(o['lr'])} -> "
        f"{_fmt(o['min_lr'])}, weight decay {_fmt(o['weight_decay'])} -> "
        f"{_fmt(o['weight_decay_end'])}",
        f"- DINO head {k['out_dim']} prototypes, teacher temperature "
        f"{_fmt(k['teacher_temp'])}, teacher momentum {_fmt(k['momentum_teacher'])}, "
        f"centering {k['centering']}",
    ]


def _monitor_lines(summary: Mapping[str, Any]) -> list[str]:
    m = summary.get("metrics") or {}
    rows = [f"| {label} | {_fmt(m[key])} |" for key, label in MONITORS if key in m]
    if not rows:
        return ["No summary.json with metrics beside the export."]
    lines = ["| monitor | value |", "|---|---|", *rows, ""]
    health = summary.get("health") or {}
    collapse = health.get("collapse") or {}
    init = health.get("init") or {}
    if collapse or init:
        lines.append(
            f"Health: collapsed {_fmt(collapse.get('collapsed'))}, left the init "
            f"{_fmt(init.get('left_init'))}; warnings: "
            f"{'; '.join(health.get('warnings') or []) or 'none'}."
        )
    return lines


def model_card(
    config: Mapping[str, Any],
    run_name: str,
    run_config: Mapping[str, Any],
    summary: Mapping[str, Any],
) -> str:
    """The export's ``README.md`` (Markdown) from its config.json and the run's files."""
    variant, size = config["variant"], config["img_size"]
    inp = config["input"]
    if inp["hu_window"] is None:
        norm = "The HU window is unknown (no pretraining run beside the export)."
    else:
        lo, hi = inp["hu_window"]
        norm = (
            f"`x = clip(HU, {_fmt(lo)}, {_fmt(hi)}) * {_fmt(inp['scale'])} + "
            f"{_fmt(inp['offset'])}` (the HU window onto [-1, 1])."
        )
    total = summary.get("total_steps")
    steps = f"{config['step']}" + (f" of {total}" if total else "")
    status = summary.get("status", "unknown")
    lines = [
        f"# DINO-LG CT encoder: ViT {variant}, one channel",
        "",
        f"The teacher backbone of the pretraining run `{run_name}` at step {steps} "
        f"(run status: {status}), exported by `tools/export_encoder.py` for PyTorch / timm.",
        "",
        "## Load in PyTorch (timm)",
        "",
        "```python",
        torch_export.timm_snippet(variant, size),
        "```",
        "",
        f"`model(x)` is the CLS token after the final LayerNorm [B, {config['embed_dim']}]; "
        "`model.forward_features(x)` all tokens [B, 1 + N, D]. The model takes "
        f"[B, 1, {size}, {size}]. For another size S (a multiple of {config['patch_size']}), "
        "resize the position table as this project does before loading: "
        "`sd['pos_embed'] = timm.layers.resample_abs_pos_embed(sd['pos_embed'], "
        f"(S // {config['patch_size']}, S // {config['patch_size']}), antialias=False)` and "
        "build the model with `img_size=S`.",
        "",
        "## Input",
        "",
        f"One channel: axial CT slices in Hounsfield units, normalised as {norm}",
        _crops_line(config["trained_crop_sizes"]),
        "",
        "## Data",
        "",
        *_data_lines(run_config),
        "",
        "## Recipe",
        "",
        *_recipe_lines(run_config),
        "",
        "## Monitors at the last step",
        "",
        *_monitor_lines(summary),
        "",
        "## Checksums",
        "",
        f"- params_checksum (SHA-256 over the Flax params, `runtime.checkpoint."
        f"params_checksum`): `{config['params_checksum']}`",
        f"- SHA-256 of `{SAFETENSORS_FILE}`: `{config['safetensors_sha256']}`",
        "",
    ]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def export_encoder(workdir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Writes the encoder of a pretraining workdir as safetensors + config.json + card.

    Args:
      workdir: a pretraining workdir (with ``encoder/``) or an encoder export folder.
      out_dir: the output folder (created; the three files in it are replaced).

    Returns:
      ``{"files": {name: bytes}, "variant", "step", "params_checksum",
      "safetensors_sha256", "n_tensors", "n_params"}``.

    Raises:
      FileNotFoundError: no encoder export in ``workdir``.
      CheckpointError: the export's params do not match its checksum.
    """
    workdir = Path(workdir).absolute()
    params, model_config = checkpoint.load_encoder(workdir)
    enc_dir = workdir if (workdir / "params").exists() else workdir / checkpoint.ENCODER_DIR
    run, run_config, summary = _run_files(workdir)
    variant = str(model_config["variant"])
    size = torch_export.ref_image_size_of(params, variant)
    state_dict = torch_export.vit_params_to_torch(params, variant, ref_image_size=size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sha = torch_export.save_safetensors(state_dict, out / SAFETENSORS_FILE)
    config = release_config(
        model_config,
        size,
        run_config,
        step=checkpoint.export_step(enc_dir),
        params_checksum=checkpoint.params_checksum(params),
        safetensors_sha256=sha,
    )
    _write_text(out / CONFIG_FILE, json.dumps(config, indent=1, sort_keys=True) + "\n")
    _write_text(out / CARD_FILE, model_card(config, run.name, run_config, summary))
    names = (SAFETENSORS_FILE, CONFIG_FILE, CARD_FILE)
    return {
        "files": {n: (out / n).stat().st_size for n in names},
        "variant": variant,
        "step": config["step"],
        "params_checksum": config["params_checksum"],
        "safetensors_sha256": sha,
        "n_tensors": len(state_dict),
        "n_params": int(sum(np.prod(v.shape) for v in state_dict.values())),
    }
