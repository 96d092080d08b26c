"""Segmentation on GPU, the paper's Table 4, for each net of ``models.segmenters``.

``get_config("unet" | "attention_unet" | "swin_unet" | "vit_unet")`` (default ``unet``):
64 initial filters (Swin: width 64, window 8; ``vit_unet``: the DINO-LG ViT itself with
a 16-filter decoder), 512x512, batch 64, lr 1e-4, 100 epochs; 5 classes (background,
RCA, LAD, LCA, LCX); bf16 compute (params and loss stay float32). The values are
``configs/common.py:segment_config`` with the lines below. ``vit_unet`` starts from a
pretraining run's export (``--config.encoder``; ``--config.model.kwargs.freeze_encoder=True``
keeps the encoder fixed).

    python tools/segment.py --config configs/segment.py:unet --workdir /runs/seg_unet \
        --config.data.manifest=/data/coca_records/manifest.json
    python tools/segment.py --config configs/segment.py:vit_unet --workdir /runs/seg_vit \
        --config.encoder=/runs/dinolg_vitb8 --config.data.manifest=/data/coca/manifest.json

Expect `summary.json` with per-artery IoU/Dice on the test split over all slices and over
slices with calcium (the paper's Table 5 reports, for U-Net, Dice 0.98 / 0.75 / 0.60 / 0.70
on RCA / LAD / LCA / LCX). Re-running the command resumes from the last checkpoint.
"""

from configs import common


def get_config(arg=None):
    c = common.segment_config(arg or "unet")  # an unknown name raises, naming the choices
    c.model.dtype = "bfloat16"  # compute dtype; params and loss stay float32
    c.data.worker_count = 8
    return c
