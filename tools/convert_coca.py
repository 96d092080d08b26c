"""Converts a COCA release (or a phantom in its format) into ArrayRecord shards.

    python tools/convert_coca.py --release /data/coca --out /data/coca_records \
        [--seed 0] [--workers 4] [--shards_per_split 8] [--unreliable_labels exclude]

Writes ``manifest.json``, ``report.json`` and the shards of the splits pretrain, train,
val and test under --out; re-running into the same folder is safe. A second conversion
into a folder that one is writing into stops at once with an ``error:`` line (exit 1).
Check the result byte by byte with ``tools/verify_dataset.py OUT``.
"""

from __future__ import annotations

import json

from absl import flags

from dinolg_jax.runtime import cli

_RELEASE = flags.DEFINE_string("release", None, "COCA release root.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Split seed.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes loading studies.")
_SHARDS = flags.DEFINE_integer("shards_per_split", 4, "ArrayRecord shards per split.")
_KEEP_CACHE = flags.DEFINE_bool("keep_cache", False, "Keep per-study cache for re-runs.")
_UNRELIABLE = flags.DEFINE_enum(
    "unreliable_labels",
    "exclude",
    ["exclude", "keep"],
    "Patients whose ROIs fail the rasterisation self-check: out of train/val/test, or kept.",
)


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    cli.require_dir(_RELEASE.value, "--release", "the COCA release root (Gated_release_final/ ...)")
    from dinolg_jax.data import convert, convert_report

    report = convert.convert_release(
        _RELEASE.value,
        _OUT.value,
        seed=_SEED.value,
        workers=_WORKERS.value,
        shards_per_split=_SHARDS.value,
        keep_cache=_KEEP_CACHE.value,
        unreliable_labels=_UNRELIABLE.value,
    )
    print(convert_report.format_summary(report))
    print(json.dumps(report["timings"]))


if __name__ == "__main__":
    cli.run(main)
