"""DINO / DINO-LG pretraining entry point.

    python tools/pretrain.py --config configs/dinolg.py:runlocal --workdir /tmp/dinolg_local
    python tools/pretrain.py --config configs/dinolg.py:variant=B/8 --workdir W \
        --config.data.manifest=/data/coca_converted/manifest.json

Re-running with the same ``--workdir`` resumes. Several processes (one per host):
pass ``--coordinator_address host:port --num_processes N --process_id i`` (or the
``DINOLG_COORDINATOR`` / ``DINOLG_NUM_PROCESSES`` / ``DINOLG_PROCESS_ID`` variables; SLURM
and Open MPI launches are detected). Exit status: 0 when done or after a SIGTERM
checkpoint, 1 on a non-finite loss or a data error, 2 on a usage error (one ``error:``
line each). A finished run re-run returns at once; more epochs extend it. A second run
started into a running run's workdir stops at once (exit 1), naming the holder; a re-run
with another model or data config stops naming the keys (exit 2); Ctrl-C checkpoints like
SIGTERM. The terminal shows a progress line with the time left; ``WORKDIR/curves.png`` is
redrawn at each checkpoint.
"""

import json

from dinolg_jax.runtime import cli, config_ranges, workdirs

_CONFIG, _WORKDIR, _INIT_DISTRIBUTED = cli.training_flags("Pretraining")


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    config_ranges.check(_CONFIG.value)
    workdirs.require_manifest(_CONFIG.value.data.manifest, "--config.data.manifest")
    _INIT_DISTRIBUTED()
    from dinolg_jax.train import pretrain  # after distributed init: it touches devices

    summary = pretrain.pretrain(_CONFIG.value, _WORKDIR.value)  # errors: cli.run
    print(json.dumps({k: summary[k] for k in ("step", "status", "params_checksum")}))


if __name__ == "__main__":
    cli.run(main)
