"""`make demo`: the whole DINO-LG system on the synthetic phantom, on CPU, in minutes.

    python tools/demo.py --workdir demo_out [--config configs/demo.py] [--config.seed=1]

Phantom (COCA format) -> ArrayRecord conversion -> DINO-LG pretraining (CPU size) ->
calcified-slice probe -> U-Net -> integrated scoring of the test patients. Prints the
split table, each stage's time, a per-patient table (true vs predicted Agatston and risk
category), the report folder and the total wall time. Re-running resumes; finished
stages are skipped. The logic lives in `dinolg_jax.experiments.demo.run_demo`.
"""

import time
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from dinolg_jax.experiments import demo
from dinolg_jax.runtime import cli, config_ranges

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(Path(__file__).resolve().parents[1] / "configs" / "demo.py"), "Demo config file."
)
_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Folder for every demo output.")


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    config_ranges.check(_CONFIG.value)
    if not cli.verbose():  # the stages' INFO lines stay out of the demo's tables
        logging.set_verbosity(logging.WARNING)
    t0 = time.perf_counter()
    demo.run_demo(_WORKDIR.value, _CONFIG.value)
    print(f"demo wall time: {time.perf_counter() - t0:.0f} s (workdir {_WORKDIR.value})")


if __name__ == "__main__":
    cli.run(main)
