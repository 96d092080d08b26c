"""Calcified-slice probe on a pretrained DINO-LG encoder, GPU scale (the paper's Fig. 5, 6).

``get_config("linear" | "transformer")`` (default ``linear``). Features of the
train/val/test splits are extracted once (batch 64, bf16, sharded over all devices) and
cached under the workdir; the probe trains for 10 epochs with a class-balanced BCE; the
threshold is set on val for recall >= 0.95. The values are
``configs/common.py:probe_config`` with the lines below.

    python tools/probe.py --config configs/probe.py:linear --workdir /runs/probe_linear \
        --config.encoder=/runs/dinolg_vitb8 --config.data.manifest=/data/coca/manifest.json

Expect `summary.json` with val/test TP/TN/FP/FN, precision, recall (~0.95 on val by
construction), specificity, F1, ROC-AUC, and `confusion_test.png` (the paper's Fig. 6).
"""

from configs import common


def get_config(arg=None):
    if arg not in (None, "", "linear", "transformer"):
        raise ValueError(f"configs/probe.py takes 'linear' or 'transformer', got {arg!r}")
    c = common.probe_config(arg or "linear")
    c.features.dtype = "bfloat16"
    c.data.worker_count = 8
    return c
