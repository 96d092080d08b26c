"""Calcified-slice probe entry point: features -> probe -> threshold -> metrics.

    python tools/probe.py --config configs/probe.py:linear,runlocal --workdir /tmp/probe \
        --config.encoder=/tmp/dinolg_local
    python tools/probe.py --config configs/probe.py:linear --workdir W \
        --config.encoder=PRETRAIN_WORKDIR --config.data.manifest=/data/coca/manifest.json

Probe types by name: linear, transformer (``--config.probe.name``). Features are cached
under ``WORKDIR/features`` (keyed by encoder checksum and split), so a re-run only
retrains the probe. Prints the test confusion counts and scores; everything is in
``WORKDIR/summary.json``, ``WORKDIR/confusion_test.png`` and the ROC curves with the
chosen threshold, ``WORKDIR/roc_val.png`` and ``WORKDIR/roc_test.png``.
"""

import contextlib
import json

from dinolg_jax.runtime import cli, config_ranges, workdirs
from dinolg_jax.runtime.folder_lock import FolderLock

_CONFIG, _WORKDIR, _INIT_DISTRIBUTED = cli.training_flags("Probe")


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    config_ranges.check(_CONFIG.value)
    workdirs.require(_CONFIG.value.encoder, "pretrain", "--config.encoder")
    workdirs.require_manifest(_CONFIG.value.data.manifest, "--config.data.manifest")
    _INIT_DISTRIBUTED()
    import jax

    from dinolg_jax.eval import probe  # after distributed init: it touches devices

    # Process 0 holds the workdir: a second probe run into it stops at once, naming it.
    lock = FolderLock(_WORKDIR.value, "probe run")
    with lock if jax.process_index() == 0 else contextlib.nullcontext():
        summary = probe.run_probe(_CONFIG.value, _WORKDIR.value)
    keys = ("tp", "tn", "fp", "fn", "precision", "recall", "specificity", "f1", "roc_auc")
    print(
        json.dumps(
            {
                "probe": summary["probe"],
                "threshold": summary["threshold"],
                "val_recall": summary["val"]["recall"],
                "test": {k: summary["test"][k] for k in keys},
            }
        )
    )


if __name__ == "__main__":
    cli.run(main)
