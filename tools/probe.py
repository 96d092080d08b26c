"""Calcified-slice probe entry point: features -> probe -> threshold -> metrics.

    python tools/probe.py --config configs/probe.py:linear,runlocal --workdir /tmp/probe \
        --config.encoder=/tmp/dinolg_local
    python tools/probe.py --config configs/probe.py:linear --workdir W \
        --config.encoder=PRETRAIN_WORKDIR --config.data.manifest=/data/coca/manifest.json

Probe types by name: linear, transformer (``--config.probe.name``). Features are cached
under ``WORKDIR/features`` (keyed by encoder checksum and split), so a re-run only
retrains the probe. Prints the test confusion counts and scores; everything is in
``WORKDIR/summary.json`` and ``WORKDIR/confusion_test.png``.
"""

import json

from dinolg_jax.runtime import cli, workdirs

_CONFIG, _WORKDIR, _INIT_DISTRIBUTED = cli.training_flags("Probe")


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    workdirs.require(_CONFIG.value.encoder, "pretrain", "--config.encoder")
    workdirs.require_manifest(_CONFIG.value.data.manifest, "--config.data.manifest")
    _INIT_DISTRIBUTED()
    from dinolg_jax.eval import probe  # after distributed init: it touches devices

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
