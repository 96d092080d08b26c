"""DINO and DINO-LG pretraining: the paper's Table 3 rows on GPUs; ``runlocal`` on a CPU.

``get_config(arg)``, ``arg`` comma-separated (``common.parse_arg``), e.g.
``configs/dinolg.py:arm=dino,runlocal``:

* ``variant=B/8`` (the default, the paper; global batch 256, 32 per GPU on the paper's 8
  GPUs) or ``variant=S/8`` (batch 512);
* ``arm=dinolg`` (the default: a quarter of the local crops label-guided, centred on a
  calcified lesion when the slice has one) or ``arm=dino`` (every local crop random: the
  baseline row);
* ``runlocal``: the CPU size (two cores, about a minute);
* ``tiny``: the test size (implies ``runlocal``).

Paper scale (the default): 150 epochs, 2 global crops (224 px) + 16 local crops (96 px;
DINO-LG 12 random + 4 guided), the DINO recipe of ``configs/common.py:pretrain_config``;
bf16 compute with cuDNN attention (tokens padded to a multiple of 64).

    python tools/pretrain.py --config configs/dinolg.py --workdir runs/dinolg_vitb8 \
        --config.data.manifest=/data/coca_converted/manifest.json
    python tools/pretrain.py --config configs/dinolg.py:arm=dino --workdir runs/dino_vitb8 \
        --config.data.manifest=/data/coca_converted/manifest.json
    python tools/pretrain.py --config configs/dinolg.py:variant=S/8 --workdir runs/dinolg_vits8 \
        --config.data.manifest=/data/coca_converted/manifest.json

Expect the DINO loss to fall from ~11 (ln 65536) towards ~3-5 over training; the
teacher backbone lands in ``WORKDIR/encoder`` for the probe and U-Net.

``runlocal``: the CPU run that learns something (``common.cpu_size``; the ``variant`` is
replaced). The tiny ``mu/8`` ViT (width 32, depth 2), 2 global crops of 64 px and 8 local
crops of 32 px (DINO-LG 6 random + 2 guided), a 1024-prototype head, global batch 16.
With no ``data.manifest`` the first run writes a small phantom release under the
workdir and converts it (``WORKDIR/phantom``); later runs reuse it.

    python tools/pretrain.py --config configs/dinolg.py:runlocal --workdir /tmp/dinolg_local

About 650 steps (30 epochs; 73 s on two idle cores). Expect ``metrics.jsonl`` to show
the loss falling for the first ~50 steps, then a plateau well below ln 1024 (the uniform
output), the teacher not collapsed, ``summary.json`` with ``status: done`` and no health
warning, and ``encoder/`` with the teacher backbone; one run's figures are in
``docs/measurements.md#the-runlocal-pretraining-run``. Re-running the same command
resumes (and returns at once when finished).

``tiny`` is the test size (batch 8, 32/16 px crops, 2 epochs, a checkpoint every 2
steps) that ``tests/train/pretrain_test.py`` runs on synthetic records.
"""

from configs import common

BATCH = {"B/8": 256, "S/8": 512}  # global batch per variant (paper scale)


def get_config(arg=None):
    a = common.parse_arg(
        arg, "dinolg", flags=("runlocal", "tiny"), variant=tuple(BATCH), arm=("dinolg", "dino")
    )
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
    _local_crops(c, a.arm, n_local=16, guided=4)
    c.checkpoint.every_steps = 1000
    c.log_every = 50
    if a.runlocal or a.tiny:
        _runlocal(c, a.arm)
    if a.tiny:
        _tiny(c, a.arm)
    return c


def _local_crops(c, arm, n_local, guided):
    """``n_local`` local crops per image, ``guided`` of them label-guided in the DINO-LG arm
    (the DINO arm: every one random)."""
    guided = guided if arm == "dinolg" else 0
    c.data.n_local_random = n_local - guided
    c.data.n_local_guided = guided


def _runlocal(c, arm):
    """The CPU size: a run on two cores that learns something (module docstring)."""
    common.cpu_size(c)  # float32, XLA attention, no Grain workers, 2 checkpoints kept
    c.model.variant = "mu/8"
    c.model.pad_tokens_to = 0
    c.model.drop_path_rate = 0.1
    c.dino.update(out_dim=1024, hidden_dim=128, bottleneck_dim=64)
    # A much sharper teacher than DINO's 0.04 -> 0.07, which stays uniform at this size
    # (see docs/measurements.md#teacher-temperature; DINO's momentum 0.996 is kept:
    # #teacher-momentum there).
    c.dino.update(warmup_teacher_temp=0.01, teacher_temp=0.01)
    c.num_epochs = 30.0
    c.optim.lr = 5e-3  # per 256 images: 3.1e-4 at batch 16
    c.optim.update(warmup_epochs=1.0, freeze_last_layer=1.0)
    c.data.update(batch_size=16, global_size=64, local_size=32)
    _local_crops(c, arm, n_local=8, guided=2)
    c.data.guided_offset_px = 4.0
    c.phantom.n_gated = 12  # enough patients for non-empty val/test splits
    c.phantom.n_nongated = 2
    c.phantom.size = 128
    c.log_every = 10
    c.checkpoint.every_steps = 50


def _tiny(c, arm):
    """The test size, on top of ``runlocal``: seconds of compile and run."""
    c.dino.update(out_dim=256, hidden_dim=32, bottleneck_dim=16)
    c.num_epochs = 2.0
    c.optim.warmup_epochs = 0.5
    c.data.update(batch_size=8, global_size=32, local_size=16)
    _local_crops(c, arm, n_local=4, guided=2)
    c.data.guided_offset_px = 2.0
    c.log_every = 1
    c.checkpoint.every_steps = 2
    c.checkpoint.keep = 3
