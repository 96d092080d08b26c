"""CPU-sized DINO-LG pretraining: the demo and the tests run this (a few minutes, 2 cores).

The tiny ``mu/8`` ViT (width 32, depth 2), 2 global crops of 64 px and 6 random + 2
guided local crops of 32 px, a 1024-prototype head, global batch 16. With no
``data.manifest`` the first run writes a small phantom release under the workdir and
converts it (``WORKDIR/phantom``); later runs reuse it.

    python tools/pretrain.py --config configs/smoke.py --workdir /tmp/dinolg_smoke

About 650 steps (22 per epoch on the phantom's ~350 pretraining slices, 30 epochs).
Expect ``metrics.jsonl`` to show the loss rising for the first ~30 steps (the teacher
sharpens, the centre settles) and then falling for the rest of the run, from ~6.9 to
~6.4 nats (ln 1024 = 6.93 is the uniform output); ``summary.json`` with ``status:
done`` and ``encoder/`` with the teacher backbone.
Re-running the same command resumes (and returns at once when finished).

``configs/smoke.py:tiny`` is the test size (batch 8, 32/16 px crops, 2 epochs, a
checkpoint every 2 steps) that ``tests/pretrain_test.py`` runs on synthetic records.
"""

from dinolg_jax.train.pretrain import base_config


def get_config(arg=None):
    if arg not in (None, "", "tiny"):
        raise ValueError(f"configs/smoke.py takes no argument or 'tiny', got {arg!r}")
    c = base_config()
    c.model.variant = "mu/8"
    c.model.dtype = "float32"
    c.model.attention_impl = "xla"
    c.model.drop_path_rate = 0.1
    c.dino.out_dim = 1024
    c.dino.hidden_dim = 128
    c.dino.bottleneck_dim = 64
    # Short run: a sharp teacher from the start (DINO's 0.04) and a faster EMA; with the
    # default 0.04 -> 0.07 ramp the tiny model settles at the uniform output (ln K).
    c.dino.warmup_teacher_temp = 0.04
    c.dino.teacher_temp = 0.04
    c.dino.momentum_teacher = 0.99
    c.num_epochs = 30.0
    c.optim.lr = 5e-3  # per 256 images: 3.1e-4 at batch 16
    c.optim.warmup_epochs = 1.0
    c.optim.freeze_last_layer = 1.0
    c.data.batch_size = 16
    c.data.global_size = 64
    c.data.local_size = 32
    c.data.n_local_random = 6
    c.data.n_local_guided = 2
    c.data.guided_offset_px = 4.0
    c.data.worker_count = 0
    c.phantom.n_gated = 12  # enough patients for non-empty val/test splits
    c.phantom.n_nongated = 2
    c.phantom.size = 128
    c.log_every = 10
    c.checkpoint.every_steps = 50
    c.checkpoint.keep = 2
    if arg == "tiny":
        c.dino.out_dim = 256
        c.dino.hidden_dim = 32
        c.dino.bottleneck_dim = 16
        c.num_epochs = 2.0
        c.optim.warmup_epochs = 0.5
        c.data.batch_size = 8
        c.data.global_size = 32
        c.data.local_size = 16
        c.data.n_local_random = 2
        c.data.n_local_guided = 2
        c.data.guided_offset_px = 2.0
        c.log_every = 1
        c.checkpoint.every_steps = 2
        c.checkpoint.keep = 3
    return c
