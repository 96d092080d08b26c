"""DINO and DINO-LG pretraining at the paper's scale: Table 3's rows, on GPUs.

``get_config("variant=B/8,arm=dinolg")`` (the defaults): ``variant`` ``B/8`` (the paper;
global batch 256, 32 per GPU on the paper's 8 GPUs) or ``S/8`` (batch 512); ``arm``
``dinolg`` (12 random + 4 label-guided local crops; a guided crop is centred on a
calcified lesion when the slice has one) or ``dino`` (16 random, 0 guided: the baseline
row). 150 epochs, 2 global crops (224 px) + 16 local crops (96 px), the DINO recipe of
``configs/common.py:pretrain_config``; bf16 compute with cuDNN attention (tokens padded
to a multiple of 64).

    python tools/pretrain.py --config configs/dinolg.py --workdir runs/dinolg_vitb8 \
        --config.data.manifest=/data/coca_converted/manifest.json
    python tools/pretrain.py --config configs/dinolg.py:arm=dino --workdir runs/dino_vitb8 \
        --config.data.manifest=/data/coca_converted/manifest.json
    python tools/pretrain.py --config configs/dinolg.py:variant=S/8 --workdir runs/dinolg_vits8 \
        --config.data.manifest=/data/coca_converted/manifest.json

Expect the DINO loss to fall from ~11 (ln 65536) towards ~3-5 over training; the
teacher backbone lands in ``WORKDIR/encoder`` for the probe and U-Net.

``runlocal`` (e.g. ``configs/dinolg.py:arm=dino,runlocal``) shrinks the same recipe to a
CPU check that the config runs (``common.cpu_size``, the ``mu/8`` ViT, a small head,
32 / 16 px crops, batch 8, 4 steps on the phantom made under the workdir); its numbers
mean nothing. ``configs/smoke.py`` is the CPU run that learns something.

    python tools/pretrain.py --config configs/dinolg.py:runlocal --workdir /tmp/dinolg_local
"""

from configs import common

BATCH = {"B/8": 256, "S/8": 512}  # global batch per variant
GUIDED = {"dinolg": 4, "dino": 0}  # label-guided local crops of 16, per arm


def get_config(arg=None):
    a = common.parse_arg(arg, variant="B/8", arm="dinolg", runlocal="")
    if a.variant not in BATCH or a.arm not in GUIDED:
        raise ValueError(f"configs/dinolg.py: variant B/8 or S/8, arm dinolg or dino; got {arg!r}")
    c = common.pretrain_config()
    c.model.variant = a.variant
    c.model.dtype = "bfloat16"
    c.model.attention_impl = "cudnn"
    c.model.pad_tokens_to = 64
    c.num_epochs = 150.0
    c.data.batch_size = BATCH[a.variant]
    c.data.n_global = 2
    c.data.global_size = 224
    c.data.local_size = 96
    c.data.n_local_random = 16 - GUIDED[a.arm]
    c.data.n_local_guided = GUIDED[a.arm]
    c.checkpoint.every_steps = 1000
    c.log_every = 50
    if a.runlocal:  # the CPU shrink block: does the config run?
        common.cpu_size(c)
        c.model.variant = "mu/8"
        c.model.pad_tokens_to = 0
        c.dino.out_dim = 256
        c.dino.hidden_dim = 32
        c.dino.bottleneck_dim = 16
        c.num_epochs = 2.0
        c.num_steps = 4
        c.data.batch_size = 8
        c.data.global_size = 32
        c.data.local_size = 16
        c.data.guided_offset_px = 2.0
        c.log_every = 1
        c.eval_every = 0
        c.checkpoint.every_steps = 2
    return c
