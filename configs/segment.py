"""Segmentation for each net of ``models.segmenters``: the paper's Table 4 on GPUs;
``runlocal`` on a CPU.

``get_config(arg)``, ``arg`` comma-separated (``common.parse_arg``): the model, ``unet``
(the default), ``attention_unet``, ``swin_unet`` or ``vit_unet`` (also ``model=...``);
``runlocal``: the CPU size.

Paper scale (the default): 64 initial filters (Swin: width 64, window 8; ``vit_unet``:
the DINO-LG ViT itself with a 16-filter decoder), 512x512, batch 64, lr 1e-4, 100
epochs; 5 classes (background, RCA, LAD, LCA, LCX); bf16 compute (params and loss stay
float32). The values are ``configs/common.py:segment_config`` with the lines below.
``vit_unet`` starts from a pretraining run's export (``--config.encoder``;
``--config.model.kwargs.freeze_encoder=True`` keeps the encoder fixed).

    python tools/segment.py --config configs/segment.py:unet --workdir /runs/seg_unet \
        --config.data.manifest=/data/coca_records/manifest.json
    python tools/segment.py --config configs/segment.py:vit_unet --workdir /runs/seg_vit \
        --config.encoder=/runs/dinolg_vitb8 --config.data.manifest=/data/coca/manifest.json

Expect `summary.json` with per-artery IoU/Dice on the test split over all slices and over
slices with calcium (the paper's Table 5 reports, for U-Net, Dice 0.98 / 0.75 / 0.60 / 0.70
on RCA / LAD / LCA / LCX). Re-running the command resumes from the last checkpoint.

``runlocal``: about 2-4 minutes on two cores, for the demo and the tests. 8-filter nets
(Swin: width 8, window 4), global batch 8, 200 steps at lr 1e-2 on the phantom's train
split (a 12-patient phantom made under the workdir when no ``data.manifest`` is given),
evaluated on its test split. ``vit_unet`` needs ``--config.encoder=PRETRAIN_WORKDIR``.

    python tools/segment.py --config configs/segment.py:unet,runlocal --workdir /tmp/seg_local

Expect the loss to fall in ``metrics.jsonl`` and ``summary.json`` with per-artery Dice
(small at this scale: a demo-size run, not the paper's numbers).
"""

from configs import common

MODELS = ("unet", "attention_unet", "swin_unet", "vit_unet")  # models.segmenters.SEGMENTERS
LOCAL_KWARGS = {  # the nets at the CPU size
    "unet": {"filters": 8},
    "attention_unet": {"filters": 8},
    "swin_unet": {"embed_dim": 8, "num_heads": (1, 2, 2, 4), "window": 4},
    "vit_unet": {"decoder_filters": 8},
}


def get_config(arg=None):
    a = common.parse_arg(arg, "segment", flags=("runlocal",), model=MODELS)
    c = common.segment_config(a.model)
    c.model.dtype = "bfloat16"  # compute dtype; params and loss stay float32
    c.data.batch_size = 64  # Table 4
    c.data.worker_count = 8
    c.optim.lr = 1e-4  # Table 4
    c.optim.epochs = 100  # Table 4
    if a.runlocal:
        _runlocal(c)
    return c


def _runlocal(c):
    """The CPU size: small nets, 200 steps on a 12-patient phantom."""
    common.cpu_size(c)  # float32, no Grain workers, 2 checkpoints kept
    c.model.kwargs = {**LOCAL_KWARGS[c.model.name], "background_prior": 0.999}
    c.data.batch_size = 8
    c.optim.lr = 1e-2
    c.optim.num_steps = 200
    c.eval.batch_size = 16
    c.log_every = 10
    c.checkpoint.every_steps = 30
    # The phantom made when no manifest is given: 12 patients, enough for non-empty val
    # and test splits (6 left test empty, so evaluation failed after training).
    c.phantom.n_gated = 12
