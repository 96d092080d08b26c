"""DINO vs DINO-LG ablation: pretrain -> probe -> U-Net -> integrated scoring, per arm and seed.

    python tools/ablate.py --config configs/ablation.py:runlocal --workdir runs/ablation
    python tools/ablate.py --config configs/ablation.py --workdir W \
        --config.data_manifest=/data/coca_converted/manifest.json

Re-running with the same ``--workdir`` skips finished stages and resumes an interrupted
one from its checkpoint; the same config and seeds give the same ``results.json``.
Prints the probes' calcified-slice F1 per arm and the report's path. Exit status 0 when
done or after a SIGTERM checkpoint (re-run to resume), 1 on a non-finite loss.
"""

import json

from absl import flags
from ml_collections import config_flags

from dinolg_jax.runtime import cli, config_ranges
from dinolg_jax.runtime.folder_lock import FolderLock

_CONFIG = config_flags.DEFINE_config_file("config", None, "Ablation config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output (and resume) directory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    config_ranges.check(_CONFIG.value)
    from dinolg_jax.experiments import ablation, stages  # after flags: they touch devices

    try:
        with FolderLock(_WORKDIR.value, "ablation"):  # a second ablation into it stops
            results = ablation.run_ablation(_CONFIG.value, _WORKDIR.value)
    except stages.StageInterrupted as err:
        print(f"interrupted: {err}")
        return  # a non-finite loss or a data error: one error line from cli.run
    for arm, agg in results["aggregate"].items():
        print(json.dumps({"arm": arm, "probe_f1": agg.get("probe_f1")}))
    print(f"report: {_WORKDIR.value}/{results['report']}")


if __name__ == "__main__":
    cli.run(main)
