"""The demo (``make demo``): the whole system on the synthetic phantom, at CPU size.

    python -c "from dinolg_jax.experiments.demo import run_demo; run_demo('demo_out')"

Phantom (30 gated patients, 64 px) -> conversion -> DINO-LG pretraining of the mu/8 ViT
(150 steps, 6 random + 2 guided local crops) -> linear probe -> 8-filter U-Net (1200
steps) -> integrated scoring of the 4 test patients; about 6 minutes on 2 busy CPU
cores. Expect a per-patient table (true vs predicted Agatston and risk category), the
report folder ``demo_out/infer/out/report`` and a line saying this is a demo-size run:
the scores show that the pipeline works end to end, not the paper's accuracy (at this
budget the DINO loss stays at ln(1024), so the gate is near chance and passes almost
every slice to the U-Net). Re-running resumes.
The settings live in ``dinolg_jax.experiments.demo.default_config``.
"""

from dinolg_jax.experiments.demo import default_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/demo.py takes no argument, got {arg!r}")
    return default_config()
