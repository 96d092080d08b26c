"""attention_unet segmentation on GPU, the paper's Table 4.

64 initial filters, 512x512, batch 64, lr 1e-4, 100 epochs; 5 classes
(background, RCA, LAD, LCA, LCX).

    python tools/segment.py --config configs/segment_attention_unet.py \
        --workdir /runs/seg_attention_unet \
        --config.data.manifest=/data/coca_records/manifest.json

Expect `summary.json` with per-artery IoU/Dice on the test split over all slices and over
slices with calcium (the paper's Table 5 reports, for U-Net, Dice 0.98 / 0.75 / 0.60 / 0.70
on RCA / LAD / LCA / LCX). Re-running the command resumes from the last checkpoint.
"""

from dinolg_jax.train.segment import base_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/segment_attention_unet.py takes no argument, got {arg!r}")
    c = base_config("attention_unet")
    c.model.dtype = "bfloat16"  # compute dtype; params and loss stay float32
    c.data.worker_count = 8
    return c
