"""Draws one slice's multi-crop as a PNG grid (the paper's Fig. 2), guided crops outlined.

    python tools/show_crops.py --manifest /data/coca_records --split pretrain \
        --index 120 --out crops.png [--variant dinolg] [--seed 0]

Top left: the normalised slice with every crop box (globals blue, random locals grey,
guided locals red) and the lesion centres (yellow crosses). Then the global crops and
the local crops, guided ones framed in red. The crops are drawn with a generator seeded
from (--seed, --index), like but not identical to the training stream's.
"""

from __future__ import annotations

import math

import grain
import matplotlib
import numpy as np
from absl import flags

matplotlib.use("Agg")
import matplotlib.patches as patches
import matplotlib.pyplot as plt

from configs import common
from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import records, transforms
from dinolg_jax.data.multicrop import MultiCrop
from dinolg_jax.runtime import cli

_MANIFEST = flags.DEFINE_string("manifest", None, "manifest.json or its folder.", required=True)
_SPLIT = flags.DEFINE_string("split", "pretrain", "Manifest split.")
_INDEX = flags.DEFINE_integer("index", 0, "Global record index in the split.", lower_bound=0)
_OUT = flags.DEFINE_string("out", "crops.png", "Output PNG.")
_VARIANT = flags.DEFINE_enum("variant", "dinolg", ["dino", "dinolg"], "Crop recipe.")
_SEED = flags.DEFINE_integer("seed", 0, "Augmentation seed.", lower_bound=0)


def main(argv: list[str]) -> None:
    del argv
    m = manifest_lib.load(_MANIFEST.value)
    if not 0 <= _INDEX.value < m.num_records(_SPLIT.value):
        raise cli.UsageError(f"--index must be in [0, {m.num_records(_SPLIT.value)})")
    source = grain.sources.ArrayRecordDataSource(m.shard_paths(_SPLIT.value))
    rec = records.decode(source[_INDEX.value])
    data = common.data_config(_VARIANT.value)
    op = MultiCrop.from_config(data, debug=True)
    rng = np.random.Generator(np.random.Philox(key=[_SEED.value, _INDEX.value]))
    out = op.random_map(rec, rng)
    crops = [c[..., 0] for c in out["global"]] + [c[..., 0] for c in out["local"]]
    guided = np.concatenate([np.zeros(op.n_global, bool), out["guided_hit"]])
    cols = 6
    rows = 1 + math.ceil(len(crops) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    ax = axes[0, 0]
    ax.imshow(transforms.normalize_hu(rec["image"], data.hu_window), cmap="gray", vmin=-1, vmax=1)
    for i, (top, left, h, w) in enumerate(out["boxes"]):
        color = "tab:blue" if i < op.n_global else ("red" if guided[i] else "0.6")
        ax.add_patch(
            patches.Rectangle((left - 0.5, top - 0.5), w, h, fill=False, color=color, lw=0.8)
        )
    if len(rec["lesion_centers"]):
        ax.plot(rec["lesion_centers"][:, 1], rec["lesion_centers"][:, 0], "x", color="yellow", ms=5)
    ax.set_title(f"{rec['study']} slice {rec['slice']}", fontsize=8)
    for i, crop in enumerate(crops):
        ax = axes[1 + i // cols, i % cols]
        ax.imshow(crop, cmap="gray", vmin=-1, vmax=1)
        kind = "global" if i < op.n_global else ("guided" if guided[i] else "local")
        ax.set_title(f"{kind} {crop.shape[0]}px", fontsize=7, color="red" if guided[i] else "k")
        if guided[i]:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("red")
                spine.set_linewidth(2)
    fig.tight_layout()
    fig.savefig(_OUT.value, dpi=110)
    print(_OUT.value)


if __name__ == "__main__":
    cli.run(main)
