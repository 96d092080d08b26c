"""Calcified-slice probe (`transformer`) on a pretrained DINO-LG encoder, GPU scale.

Features of the train/val/test splits are extracted once (batch 64, sharded over all
devices) and cached under the workdir; the probe trains for 10 epochs with a
class-balanced BCE; the threshold is set on val for recall >= 0.95.

    python tools/probe.py --config configs/probe_transformer.py --workdir /runs/probe_transformer \
        --config.encoder=/runs/dinolg_vitb8 --config.data.manifest=/data/coca/manifest.json

Expect `summary.json` with val/test TP/TN/FP/FN, precision, recall (~0.95 on val by
construction), specificity, F1, ROC-AUC, and `confusion_test.png` (the paper's Fig. 6).
"""

from dinolg_jax.train.probe import base_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/probe_transformer.py takes no argument, got {arg!r}")
    c = base_config("transformer")
    c.features.dtype = "bfloat16"
    c.data.worker_count = 8
    return c
