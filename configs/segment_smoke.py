"""CPU-sized segmentation run (about 2-4 minutes on 2 cores) for the demo and the tests.

``get_config("unet" | "attention_unet" | "swin_unet" | "vit_unet")`` (default ``unet``):
8-filter nets (Swin: width 8, window 4), global batch 8, 200 steps at lr 1e-2 on the
phantom's train split (a 12-patient phantom made under the workdir when no
``data.manifest`` is given), evaluated on its test split. ``vit_unet`` needs
``--config.encoder=PRETRAIN_WORKDIR``.

    python tools/segment.py --config configs/segment_smoke.py:unet --workdir /tmp/seg_smoke

Expect the loss to fall in ``metrics.jsonl`` and ``summary.json`` with per-artery Dice
(small at this scale: a demo-size run, not the paper's numbers).
"""

from configs import common


def get_config(arg=None):
    c = common.cpu_size(common.segment_config(arg or "unet"))  # 2 checkpoints kept
    c.model.kwargs = {
        "unet": {"filters": 8},
        "attention_unet": {"filters": 8},
        "swin_unet": {"embed_dim": 8, "num_heads": (1, 2, 2, 4), "window": 4},
        "vit_unet": {"decoder_filters": 8},
    }[c.model.name]
    c.model.kwargs.background_prior = 0.999
    c.data.batch_size = 8
    c.optim.lr = 1e-2
    c.optim.num_steps = 200
    c.eval.batch_size = 16
    c.log_every = 10
    c.checkpoint.every_steps = 30
    # The phantom made when no manifest is given: 12 patients, enough for non-empty val
    # and test splits (6 left test empty, so evaluation failed after training).
    c.phantom.n_gated = 12
    return c
