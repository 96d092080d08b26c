"""Attention on calcium: the paper's Fig. 3 as a number (``attn_calcium_ratio``).

For a calcified slice fed to the encoder at ``size`` px (patch grid ``g x g``), take the
last block's attention of the CLS token over the ``g * g`` patch tokens, renormalised to
sum to 1 over the patches: ``a`` [g*g]. With ``m`` the patches that contain calcium (a
grid cell is calcium when any label pixel of the slice falls in it, at the slice's own
resolution, so no lesion is lost to resampling)::

    share = sum(a * m)            attention that falls on calcium patches
    chance = mean(m)              share of patches that contain calcium
    ratio = share / chance        1 = attention blind to calcium; > 1 = drawn to it

``mean over heads``: ``a`` is the head-mean map; ``per head``: each head's own map. The
reported ``attn_calcium_ratio`` is the mean of the slices' ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from dinolg_jax.data import transforms
from dinolg_jax.models.vit import ViT, decode_variant


def calcium_patch_mask(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Which cells of a ``grid`` over the slice contain any calcium pixel.

    Args:
      labels: [H, W] or [B, H, W] label masks (nonzero = calcium), any resolution.
      grid: (rows, cols) of the patch grid.

    Returns:
      bool [B, rows * cols] (B = 1 for a single mask), row-major like the ViT's tokens.
      Cell (i, j) covers label rows ``floor(i H / rows) .. ceil((i + 1) H / rows) - 1``
      (and likewise columns), so a pixel on a cell border counts for both cells when H is
      not a multiple of rows.
    """
    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab[None]
    b, h, w = lab.shape
    gh, gw = int(grid[0]), int(grid[1])
    out = np.zeros((b, gh, gw), bool)
    fg = lab != 0
    for i in range(gh):
        r0, r1 = (i * h) // gh, -((-(i + 1) * h) // gh)
        rows = fg[:, r0:r1].any(axis=1)  # [B, W]
        for j in range(gw):
            c0, c1 = (j * w) // gw, -((-(j + 1) * w) // gw)
            out[:, i, j] = rows[:, c0:c1].any(axis=1)
    return out.reshape(b, gh * gw)


def attention_calcium_ratio(attention: np.ndarray, calcium: np.ndarray) -> dict[str, Any]:
    """Ratio of the CLS attention on calcium patches to chance (module docstring).

    Args:
      attention: [B, heads, N] CLS-to-patch weights (row 0 of the last block's maps,
        patch columns only; they need not sum to 1).
      calcium: bool [B, N], the calcium patches of each slice.

    Returns:
      ``{"mean": float, "per_head": [heads], "per_slice": [B'], "slice_rows": [B'],
      "n_slices": B'}`` over the B' slices with at least one calcium patch (their rows
      of the input in ``slice_rows``; ``mean`` NaN when there is none).
    """
    a = np.asarray(attention, np.float64)
    m = np.asarray(calcium, bool)
    if a.ndim != 3 or m.shape != (a.shape[0], a.shape[2]):
        raise ValueError(f"attention [B, heads, N] and calcium [B, N]; got {a.shape}, {m.shape}")
    keep = m.any(axis=1)
    a, m = a[keep], m[keep].astype(np.float64)
    rows = [int(i) for i in np.flatnonzero(keep)]
    if not len(a):
        return {"mean": float("nan"), "per_head": [], "per_slice": [], "slice_rows": [],
                "n_slices": 0}  # fmt: skip
    chance = m.mean(axis=1)  # [B']
    head_mean = a.mean(axis=1)  # [B', N]
    share = (head_mean * m).sum(1) / head_mean.sum(1)
    per_slice = share / chance
    share_h = (a * m[:, None]).sum(2) / a.sum(2)  # [B', heads]
    per_head = (share_h / chance[:, None]).mean(0)
    return {
        "mean": float(per_slice.mean()),
        "per_head": [float(x) for x in per_head],
        "per_slice": [float(x) for x in per_slice],
        "slice_rows": rows,
        "n_slices": len(a),
    }


def encoder_attention(
    params: Any,
    model_config: dict[str, Any],
    images: np.ndarray,
    batch_size: int = 32,
) -> np.ndarray:
    """Last-block CLS-to-patch attention of an encoder on whole slices.

    Args:
      params: encoder parameters; model_config: its export config (``variant``).
      images: [B, S, S] normalised slices (``transforms.normalize_hu``), S a multiple
        of the patch size.
      batch_size: images per call.

    Returns:
      float32 [B, heads, (S/p)^2].
    """
    vit = ViT(variant=model_config["variant"], return_attention=True)
    fn = jax.jit(lambda p, x: vit.apply({"params": p}, x, train=False)[1]["attention"])
    out = []
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start : start + batch_size], np.float32)[..., None]
        out.append(np.asarray(fn(params, x))[:, :, 0, 1:])
    return np.concatenate(out)


def slices_attention_ratio(
    params: Any,
    model_config: dict[str, Any],
    slices: Sequence[dict[str, Any]],
    hu_window: Sequence[float],
    size: int,
) -> dict[str, Any]:
    """``attn_calcium_ratio`` of an encoder over decoded slice records.

    Args:
      params, model_config: the encoder (``runtime.checkpoint.load_encoder``).
      slices: records with ``image`` int16 [H, W] HU and ``labels`` uint8 [H, W];
        slices without calcium are left out.
      hu_window: the encoder's input window; size: its input side, px (whole slice
        resized, as in ``tools/attention_maps.py``).

    Returns:
      :func:`attention_calcium_ratio`'s dict, ``slice_rows`` indexing ``slices``.
    """
    patch = decode_variant(model_config["variant"]).patch
    if size % patch:
        raise ValueError(f"size {size} is not a multiple of the patch size {patch}")
    rows = [j for j, r in enumerate(slices) if np.any(np.asarray(r["labels"]))]
    picked = [slices[j] for j in rows]
    if not picked:
        return attention_calcium_ratio(np.zeros((0, 1, 1)), np.zeros((0, 1), bool))
    images = []
    for rec in picked:
        img = transforms.normalize_hu(rec["image"], hu_window)
        h, w = img.shape
        images.append(transforms.resized_crops(img, np.array([[0, 0, h, w]]), size)[0])
    attn = encoder_attention(params, model_config, np.stack(images))
    grid = (size // patch, size // patch)
    calcium = calcium_patch_mask(np.stack([r["labels"] for r in picked]), grid)
    out = attention_calcium_ratio(attn, calcium)
    return {**out, "slice_rows": [rows[k] for k in out["slice_rows"]]}
