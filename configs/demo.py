"""The demo (``make demo``): the whole system on the synthetic phantom, at CPU size.

    python tools/demo.py --config configs/demo.py --workdir demo_out

Phantom (30 gated patients at 112 px on a heart-centred 110-130 mm field, 24-36 slices:
the regime of configs/ablation.py:cardiac, where a lesion covers as much of a token as in
the paper's crops) -> conversion -> DINO-LG pretraining of the nano/8 ViT (2 x 112 px
global + 4 random and 4 guided 48 px local crops, batch 16, 150 steps) -> linear probe on
the patch-token max (threshold for recall 1.0 on val) -> 8-filter U-Net (600 steps at lr
5e-3) -> integrated scoring of the 4 test patients. Expect a per-patient table (true vs
predicted Agatston and risk category, the U-Net alone beside it) ending with a line that
says whether the gate lost a calcified patient the U-Net alone finds, the report folder
``demo_out/infer/out/report`` and a line saying this is a demo-size run. The measured time
and table are in the README. Re-running resumes.
"""

import os

import ml_collections

from configs import ablation, common

HONEST_NOTE = (
    "This is a demo-size run (a tiny nano/8 ViT pretrained for a few minutes on a small "
    "synthetic phantom, on CPU): it shows the pipeline working end to end; its scores are "
    "not the paper's and say little about the method."
)

# HU window of the demo's pretraining and probe inputs (mapped to [-1, 1]): centred on the
# 130 HU calcium threshold, as configs/ablation.py:runlocal (docs/measurements.md).
CALCIUM_HU_WINDOW = (-540.0, 800.0)
# The cardiac geometry of configs/ablation.py:cardiac (docs/measurements.md#cpu-crop-geometry).
CARDIAC_SIZE, CARDIAC_FOV_MM = ablation.CARDIAC_SIZE, ablation.CARDIAC_FOV_MM


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/demo.py takes no argument, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.seed = 0  # pretraining, probe and U-Net seed
    c.phantom = ml_collections.ConfigDict(
        {"n_gated": 30, "n_nongated": 0, "seed": 0, "size": CARDIAC_SIZE, "slices": (24, 36),
         "workers": min(2, os.cpu_count() or 1), "cardiac_fov_mm": CARDIAC_FOV_MM}
    )  # fmt: skip
    c.convert = ml_collections.ConfigDict(
        {"seed": 0, "shards_per_split": 2, "workers": c.phantom.workers}
    )

    # CPU size (float32, XLA attention, no Grain workers, 2 checkpoints kept) and the
    # lessons of the CPU ablation (configs/ablation.py:runlocal, docs/measurements.md): nano/8,
    # Sinkhorn-Knopp centring at a sharp teacher (an EMA-centred teacher stays uniform at
    # this size), a threshold-centred HU window, calcified slices oversampled to half the
    # stream; the cardiac geometry's crops and the paper's blur; 150 steps (a step costs
    # 3.2x the 64 px one) to fit the demo's budget.
    c.pretrain = p = common.pretrain_config()
    p.model.variant = "nano/8"
    p.dino.out_dim = 128
    p.dino.hidden_dim = 128
    p.dino.bottleneck_dim = 64
    p.dino.update(
        centering="sinkhorn", warmup_teacher_temp=0.003, teacher_temp=0.003, momentum_teacher=0.99
    )
    p.num_epochs = 150 / 41  # the schedules end at step 150 (671 slices / 16 = 41 per epoch)
    p.num_steps = 150
    p.optim.lr = 0.016  # per 256 images: 1e-3 at batch 16
    p.optim.update(warmup_epochs=1.0, freeze_last_layer=0.0)
    p.data.update(batch_size=16, global_size=CARDIAC_SIZE, local_size=48)
    p.data.update(n_local_random=4, n_local_guided=4, guided_offset_px=3.0)
    p.data.update(blur_sigma=(0.1, 2.0), pretrain_positive_fraction=0.5)
    p.data.hu_window = CALCIUM_HU_WINDOW
    p.update(log_every=25, eval_every=100)
    p.checkpoint.every_steps = 100

    c.probe = q = common.probe_config("linear")
    q.features.update(n_last_blocks=2, token_pool=1)
    q.data.update(batch_size=32, hu_window=CALCIUM_HU_WINDOW)
    q.optim.update(epochs=20, batch_size=64)
    q.features.pooling = "max"  # a 2 px lesion is 1 of 64 patches: the max sees it
    q.eval.target_recall = 1.0  # a missed slice costs a patient; a spare one U-Net time

    c.segment = s = common.segment_config("unet")
    s.model.kwargs = {"filters": 8}
    s.data.batch_size = 8
    s.optim.update(lr=5e-3, num_steps=600)  # 112 px slices: 3x the 64 px step
    s.eval.batch_size = 32
    s.log_every = 50
    s.checkpoint.every_steps = 400
    common.cpu_size(c)

    c.infer = common.stage_infer_config()
    c.infer.batch_size = 32
    c.infer.note = HONEST_NOTE
    return c
