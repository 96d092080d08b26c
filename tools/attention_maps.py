"""PNG overlays of the pretrained encoder's last-layer attention, per head (paper Fig. 3).

    python tools/attention_maps.py --workdir /tmp/dinolg_local
    python tools/attention_maps.py --workdir runs/dinolg_vitb8 --num_slices 8 --size 448

Reads the exported teacher backbone (``WORKDIR/encoder``) and the run's ``config.json``
(HU window, manifest; the phantom under the workdir when none was configured), takes the
first ``--num_slices`` slices with calcium of ``--split`` in record order, resizes each
whole slice to ``--size`` px, and for every head draws the CLS token's attention over
the patches (softmax weights of the last block, upsampled to pixels) on the slice;
lesion centres are circled. One PNG per slice in ``--out`` (default
``WORKDIR/attention``), its title giving the slice's ``attn_calcium_ratio`` (share of the
head-mean attention on calcium patches over the share of calcium patches, chance = 1;
``eval/attention.py``) and every head's own ratio above its panel. Printed as JSON: the
PNGs, the mean ratio over the drawn slices and its per-head means.
"""

import json
from pathlib import Path

import jax
import matplotlib
import numpy as np
from absl import flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import records, transforms
from dinolg_jax.eval.attention import attention_calcium_ratio, calcium_patch_mask
from dinolg_jax.models.vit import ViT, decode_variant
from dinolg_jax.runtime import cli, workdirs
from dinolg_jax.runtime.checkpoint import load_encoder

_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir (encoder + config).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default WORKDIR/attention).")
_SPLIT = flags.DEFINE_string("split", "pretrain", "Manifest split to take slices from.")
_NUM = flags.DEFINE_integer(
    "num_slices", 4, "Number of slices (with calcium) to draw.", lower_bound=1
)
_SIZE = flags.DEFINE_integer(
    "size", 0, "Slice side fed to the ViT, px (0: the global crop).", lower_bound=0
)
flags.mark_flags_as_required(["workdir"])


def _slices(manifest: Path, split: str, n: int) -> list[dict]:
    import grain

    m = manifest_lib.load(manifest)
    source = grain.sources.ArrayRecordDataSource(m.shard_paths(split))
    picked = []
    for i in range(len(source)):
        rec = records.decode(source[i])
        if rec["has_calcium"]:
            picked.append(rec)
            if len(picked) == n:
                break
    if not picked:
        raise ValueError(f"no slice with calcium in split {split!r} of {manifest}")
    return picked


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    workdir = workdirs.require(_WORKDIR.value, "pretrain", "--workdir")
    params, model_config = load_encoder(workdir)
    config = json.loads((workdir / "config.json").read_text())
    manifest = config["data"]["manifest"] or workdir / "phantom" / "data" / "manifest.json"
    size = _SIZE.value or int(config["data"]["global_size"])
    patch = decode_variant(model_config["variant"]).patch
    if size % patch:
        raise cli.UsageError(f"--size {size} is not a multiple of the patch size {patch}")
    recs = _slices(Path(manifest), _SPLIT.value, _NUM.value)
    images = []
    for rec in recs:
        img = transforms.normalize_hu(rec["image"], config["data"]["hu_window"])
        h, w = img.shape
        images.append(transforms.resized_crops(img, np.array([[0, 0, h, w]]), size)[0])
    x = np.stack(images)[..., None]  # [B, S, S, 1]
    model = ViT(variant=model_config["variant"], return_attention=True)
    _, aux = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x)
    grid = size // patch
    attn = np.asarray(aux["attention"])[:, :, 0, 1:]  # [B, heads, N]: CLS -> patches
    calcium = calcium_patch_mask(np.stack([r["labels"] for r in recs]), (grid, grid))
    ratios = [
        attention_calcium_ratio(attn[b : b + 1], calcium[b : b + 1]) for b in range(len(recs))
    ]
    summary = attention_calcium_ratio(attn, calcium)
    attn = attn.reshape(len(recs), -1, grid, grid)
    out = Path(_OUT.value) if _OUT.value else workdir / "attention"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for b, rec in enumerate(recs):
        heads = attn.shape[1]
        fig, axes = plt.subplots(1, heads + 1, figsize=(3 * (heads + 1), 3.2), squeeze=False)
        scale = size / np.array(rec["image"].shape, np.float32)
        centers = rec["lesion_centers"] * scale
        for k, ax in enumerate(axes[0]):
            ax.imshow(x[b, ..., 0], cmap="gray", vmin=-1, vmax=1)
            if k > 0:
                up = np.kron(attn[b, k - 1], np.ones((patch, patch)))
                up = (up - up.min()) / max(float(np.ptp(up)), 1e-12)  # per-head contrast
                ax.imshow(up, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
            ax.scatter(centers[:, 1], centers[:, 0], s=80, facecolors="none", edgecolors="cyan")
            title = "slice" if k == 0 else f"head {k - 1}: {ratios[b]['per_head'][k - 1]:.2f}"
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(
            f"{rec['study']} slice {rec['slice']}: last-layer CLS attention, "
            f"attn_calcium_ratio {ratios[b]['mean']:.2f} (chance 1)",
            fontsize=9,
        )
        path = out / f"{rec['study']}_{rec['slice']:04d}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append(str(path))
    print(
        json.dumps(
            {
                "pngs": written,
                "attn_calcium_ratio": summary["mean"],
                "per_head": summary["per_head"],
                "n_slices": summary["n_slices"],
            }
        )
    )


if __name__ == "__main__":
    cli.run(main)
