"""Calcified-slice probe entry point: features -> probe -> threshold -> metrics.

    python tools/probe.py --config configs/probe.py:linear,runlocal --workdir /tmp/probe \
        --config.encoder=/tmp/dinolg_local
    python tools/probe.py --config configs/probe.py:linear --workdir W \
        --config.encoder=PRETRAIN_WORKDIR --config.data.manifest=/data/coca/manifest.json

Probe types by name: linear, transformer (``--config.probe.name``). Features are cached
under ``WORKDIR/features`` (keyed by encoder checksum and split), so a re-run only
retrains the probe (a workdir holding a probe run of another config is refused, naming
the keys). Prints the test ROC-AUC and F1 with their 95 % bootstrap intervals over test
patients (``0.82 [0.74, 0.88]``), then one JSON line of the test confusion counts and
scores (``test_ci95``: the same intervals); everything is in
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
    intervals = interval_strings(summary["test"].get("intervals", {}))
    if intervals:
        first = next(iter(summary["test"]["intervals"].values()))
        shown = ", ".join(f"{NAMES.get(k, k)} {v}" for k, v in intervals.items())
        print(
            f"test {shown} (95 % intervals: {first['n_boot']} bootstrap draws over "
            f"{first['n_groups']} test patients)"
        )
    print(
        json.dumps(
            {
                "probe": summary["probe"],
                "threshold": summary["threshold"],
                "val_recall": summary["val"]["recall"],
                "test": {k: summary["test"][k] for k in keys},
                "test_ci95": intervals,
            }
        )
    )


NAMES = {"roc_auc": "ROC-AUC", "f1": "F1"}


def interval_strings(intervals: dict[str, dict]) -> dict[str, str]:
    """{metric: "0.82 [0.74, 0.88]"} of a probe summary's ``test["intervals"]``."""
    from dinolg_jax.eval.metrics import format_interval

    return {k: format_interval(v["value"], v["ci95"]) for k, v in intervals.items()}


if __name__ == "__main__":
    cli.run(main)
