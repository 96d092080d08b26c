"""The demo (``make demo``): the whole system on the synthetic phantom, at CPU size.

    python -c "from dinolg_jax.experiments.demo import run_demo; run_demo('demo_out')"

Phantom (30 gated patients, 64 px) -> conversion -> DINO-LG pretraining of the nano/8 ViT
(300 steps, 4 random + 4 guided local crops, the CPU lessons of configs/ablation.py) ->
linear probe on the patch-token max (threshold for recall 1.0 on val) -> 8-filter U-Net
(1200 steps) -> integrated scoring of the 4 test patients. Expect a per-patient table
(true vs predicted Agatston and risk category, the U-Net alone beside it) ending with a
line that says whether the gate lost a calcified patient the U-Net alone finds, the
report folder ``demo_out/infer/out/report`` and a line saying this is a demo-size run.
The measured time and table are in the README. Re-running resumes.
The settings live in ``dinolg_jax.experiments.demo.default_config``.
"""

from dinolg_jax.experiments.demo import default_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/demo.py takes no argument, got {arg!r}")
    return default_config()
