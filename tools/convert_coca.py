"""Converts a COCA release (or a phantom in its format) into ArrayRecord shards.

    python tools/convert_coca.py --release /data/coca --out /data/coca_records \
        [--seed 0] [--workers 4] [--shards_per_split 8] [--unreliable_labels exclude]

Writes ``manifest.json``, ``report.json`` and the shards of the splits pretrain, train,
val and test under --out; re-running into the same folder is safe. A second conversion
into a folder that one is writing into stops at once with an ``error:`` line (exit 1).
Flags out of range (``--shards_per_split 0``, ``--workers 0``, a negative seed) and a
``--release`` that is not a release root (e.g. one level too deep) stop with one
``error:`` line and exit 2 before anything is written. Ctrl-C stops with one line (exit
130) and leaves no ``manifest.json``: re-run to resume.
Check the result byte by byte with ``tools/verify_dataset.py OUT``.
"""

from __future__ import annotations

import json

from absl import flags

from dinolg_jax.runtime import cli

_RELEASE = flags.DEFINE_string("release", None, "COCA release root.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Split seed.", lower_bound=0)
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes loading studies.", lower_bound=1)
_SHARDS = flags.DEFINE_integer(
    "shards_per_split", 4, "ArrayRecord shards per split.", lower_bound=1
)
_KEEP_CACHE = flags.DEFINE_bool("keep_cache", False, "Keep per-study cache for re-runs.")
_UNRELIABLE = flags.DEFINE_enum(
    "unreliable_labels",
    "exclude",
    ["exclude", "keep"],
    "Patients whose ROIs fail the rasterisation self-check: out of train/val/test, or kept.",
)


_HINT = "the COCA release root (Gated_release_final/ ...)"


def _check_release(path: str) -> None:
    """A `cli.UsageError` unless `path` holds a release's gated or non-gated folder."""
    from dinolg_jax.data import coca

    root = cli.require_dir(path, "--release", _HINT)
    if not any((root / d).is_dir() for d in (coca.GATED_DIR, coca.NONGATED_DIR)):
        inside = sorted(p.name for p in root.iterdir())[:5]
        raise cli.UsageError(
            f"--release={root} is not a COCA release root: no {coca.GATED_DIR}/ or "
            f"{coca.NONGATED_DIR}/ in it (it holds {inside}); give {_HINT}"
        )


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    _check_release(_RELEASE.value)
    from dinolg_jax.data import convert, convert_report, dataset_writer

    try:
        report = convert.convert_release(
            _RELEASE.value,
            _OUT.value,
            seed=_SEED.value,
            workers=_WORKERS.value,
            shards_per_split=_SHARDS.value,
            keep_cache=_KEEP_CACHE.value,
            unreliable_labels=_UNRELIABLE.value,
        )
    except KeyboardInterrupt:
        cli.fail(dataset_writer.interrupted_message(_OUT.value), cli.EXIT_INTERRUPTED)
    print(convert_report.format_summary(report))
    print(json.dumps(report["timings"]))


if __name__ == "__main__":
    cli.run(main)
