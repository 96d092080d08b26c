"""The demo (``make demo``): the whole system on the synthetic phantom, at CPU size.

    python -c "from dinolg_jax.experiments.demo import run_demo; run_demo('demo_out')"

Phantom (30 gated patients, 64 px) -> conversion -> DINO-LG pretraining of the mu/8 ViT
(150 steps, 6 random + 2 guided local crops) -> linear probe -> 8-filter U-Net (1200
steps) -> integrated scoring of the 4 test patients; measured on a fresh clone of this
repository: `make demo` 4 min 57 s on 2 CPU cores, set-up included (the U-Net is ~200 s
of it). Expect a per-patient table (true vs predicted Agatston and risk category), the
report folder ``demo_out/infer/out/report`` and a line saying this is a demo-size run:
the scores show that the pipeline works end to end, not the paper's accuracy (the
pretraining loss ends near 5.7 nats, below ln(1024) = 6.93, but at this budget the
encoder's features are no better than its random initialisation for the probe, so the
gate is weak and may drop calcified slices). Re-running resumes.
The settings live in ``dinolg_jax.experiments.demo.default_config``.
"""

from dinolg_jax.experiments.demo import default_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/demo.py takes no argument, got {arg!r}")
    return default_config()
