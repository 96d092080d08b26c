"""CPU-sized probe run on the smoke encoder (under a minute on 2 cores).

``get_config("linear" | "transformer")`` (default ``linear``). Needs an encoder export:

    python tools/pretrain.py --config configs/smoke.py --workdir /tmp/dinolg_smoke
    python tools/probe.py --config configs/probe_smoke.py:linear --workdir /tmp/probe_smoke \
        --config.encoder=/tmp/dinolg_smoke \
        --config.data.manifest=/tmp/dinolg_smoke/phantom/data/manifest.json

Expect ``summary.json`` and ``confusion_test.png`` (demo-size numbers: the ``mu/8``
encoder and a 6-patient phantom say little about the paper's Fig. 6).
"""

from configs import common


def get_config(arg=None):
    c = common.cpu_size(common.probe_config(arg or "linear"))  # no Grain workers
    if c.probe.name == "transformer":
        c.probe.kwargs = {"width": 32, "depth": 1, "heads": 2}
    c.data.batch_size = 16
    c.features.n_last_blocks = 2  # the mu ViT has 2 blocks
    c.features.token_pool = 2
    c.optim.epochs = 20
    c.optim.batch_size = 64
    c.optim.lr = 1e-2 if c.probe.name == "linear" else 1e-3
    return c
