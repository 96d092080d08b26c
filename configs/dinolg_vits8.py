"""DINO-LG (label-guided) ViT-S/8: the Table 3 main row with the smaller backbone.

150 epochs, 2 global crops (224 px) + 12 random and 4 label-guided local crops
(96 px; guided crops are centred on a calcified lesion when the slice has one), the
DINO recipe of ``dinolg_jax.train.pretrain.base_config``; bf16 compute with cuDNN
attention (tokens padded to a multiple of 64). Global batch 512 (64 per GPU on 8 GPUs).

    python tools/pretrain.py --config configs/dinolg_vits8.py --workdir runs/dinolg_vits8 \
        --config.data.manifest=/data/coca_converted/manifest.json

Expect the DINO loss to fall from ~11 (ln 65536) towards ~3-5; the teacher backbone
lands in ``runs/dinolg_vits8/encoder``.
"""

from dinolg_jax.train.pretrain import paper_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/dinolg_vits8.py takes no argument, got {arg!r}")
    return paper_config("S/8", n_local_guided=4, batch_size=512)
