"""Calcified-slice probe on a pretrained DINO-LG encoder: the paper's Fig. 5, 6 on GPUs;
``runlocal`` on a CPU.

``get_config(arg)``, ``arg`` comma-separated (``common.parse_arg``): ``linear`` (the
default) or ``transformer`` (the probe, also ``probe=...``); ``runlocal``: the CPU size.

Paper scale (the default): features of the train/val/test splits are extracted once
(batch 64, bf16, sharded over all devices) and cached under the workdir; the probe
trains for 10 epochs with a class-balanced BCE; the threshold is set on val for recall
>= 0.95. The values are ``configs/common.py:probe_config`` with the lines below.

    python tools/probe.py --config configs/probe.py:linear --workdir /runs/probe_linear \
        --config.encoder=/runs/dinolg_vitb8 --config.data.manifest=/data/coca/manifest.json

Expect `summary.json` with val/test TP/TN/FP/FN, precision, recall (~0.95 on val by
construction), specificity, F1, ROC-AUC, and `confusion_test.png` (the paper's Fig. 6).

``runlocal``: a probe of the ``configs/dinolg.py:runlocal`` encoder, under a minute on
two cores (float32 features, batch 16, the ``mu`` ViT's 2 blocks, 20 epochs):

    python tools/pretrain.py --config configs/dinolg.py:runlocal --workdir /tmp/dinolg_local
    python tools/probe.py --config configs/probe.py:linear,runlocal --workdir /tmp/probe_local \
        --config.encoder=/tmp/dinolg_local \
        --config.data.manifest=/tmp/dinolg_local/phantom/data/manifest.json

Expect ``summary.json`` and ``confusion_test.png`` (demo-size numbers: the ``mu/8``
encoder and a small phantom say little about the paper's Fig. 6).
"""

from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, "probe", flags=("runlocal",), probe=("linear", "transformer"))
    c = common.probe_config(a.probe)
    c.features.n_last_blocks = 4  # CLS of the last 4 blocks (DINO's linear evaluation)
    c.features.dtype = "bfloat16"
    c.data.batch_size = 64  # global batch of the feature pass
    c.data.worker_count = 8
    c.optim.epochs = 10  # the paper's 10 epochs of the linear classifier
    c.eval.target_recall = 0.95  # the threshold: the largest with this recall on val
    if a.runlocal:
        _runlocal(c)
    return c


def _runlocal(c):
    """The CPU size: the ``configs/dinolg.py:runlocal`` encoder, read in this process."""
    common.cpu_size(c)  # no Grain workers
    c.features.dtype = ""  # the export's (float32)
    if c.probe.name == "transformer":
        c.probe.kwargs = {"width": 32, "depth": 1, "heads": 2}
    c.data.batch_size = 16
    c.features.n_last_blocks = 2  # the mu ViT has 2 blocks
    c.features.token_pool = 2
    c.optim.epochs = 20
    c.optim.batch_size = 64
    c.optim.lr = 1e-2 if c.probe.name == "linear" else 1e-3
