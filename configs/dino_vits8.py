"""DINO (no label guidance) ViT-S/8: the Table 3 baseline row with the smaller backbone.

150 epochs, 2 global crops (224 px) + 16 random local crops (96 px), 0 guided crops,
the DINO recipe of ``dinolg_jax.train.pretrain.base_config``; bf16 compute with cuDNN
attention (tokens padded to a multiple of 64). Global batch 512 (64 per GPU on the
paper's 8 GPUs).

    python tools/pretrain.py --config configs/dino_vits8.py --workdir runs/dino_vits8 \
        --config.data.manifest=/data/coca_converted/manifest.json

Expect the DINO loss to fall from ~11 (ln 65536) towards ~3-5 over training; the
teacher backbone lands in ``runs/dino_vits8/encoder`` for the probe and U-Net.
"""

from dinolg_jax.train.pretrain import paper_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/dino_vits8.py takes no argument, got {arg!r}")
    return paper_config("S/8", n_local_guided=0, batch_size=512)
