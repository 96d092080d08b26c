"""Segmentation on the DINO-LG encoder itself (ViT + light decoder), on GPU.

The encoder starts from a pretraining run's export (``encoder/``); Table 4's schedule
(512x512, batch 64, lr 1e-4, 100 epochs). ``--config.model.kwargs.freeze_encoder=True``
keeps the encoder fixed.

    python tools/segment.py --config configs/segment_vit_unet.py --workdir /runs/seg_vit \
        --config.encoder=/runs/dinolg_vitb8 --config.data.manifest=/data/coca/manifest.json

Expect ``summary.json`` as for the U-Nets (per-artery IoU/Dice on the test split).
"""

from dinolg_jax.train.segment import base_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/segment_vit_unet.py takes no argument, got {arg!r}")
    c = base_config("vit_unet")
    c.model.dtype = "bfloat16"
    c.data.worker_count = 8
    return c
