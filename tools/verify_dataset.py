"""Checks a converted dataset byte by byte: every shard's size, record count and SHA-256.

    python tools/verify_dataset.py /data/coca_records      # or .../manifest.json

Reads every shard in full (about a minute per 10 GB), against what the converter
recorded in ``manifest.json``. Prints one line per split and exit status 0 when all is
well; otherwise one ``error:`` line naming each bad shard and exit status 1. A path that
does not exist is a usage error (one ``error:`` line, exit 2). (Loading a
manifest, which every tool does, checks only sizes and record counts: cheap.)
"""

from pathlib import Path

from absl import flags

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import shards
from dinolg_jax.runtime import cli

flags.DEFINE_bool("quick", False, "Sizes and record counts only, no hashes.")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise cli.UsageError("usage: verify_dataset.py DATASET_DIR (or its manifest.json)")
    if not Path(argv[1]).exists():
        raise cli.UsageError(
            f"{argv[1]} does not exist: give a converted dataset folder (or its manifest.json)"
        )
    m = manifest_lib.load(argv[1]) if flags.FLAGS.quick else _load_for_hashing(argv[1])
    bad = shards.verify_shards(m, full=not flags.FLAGS.quick)
    for split, info in m.splits.items():
        n_bad = sum(b[0] == split for b in bad)
        status = "ok" if not n_bad else f"{n_bad} bad"
        n, records = len(info["shards"]), info["num_records"]
        print(f"{split:<9} {n} shard(s) {records:>8} records  {status}")
    if bad:
        for split, path, problem in bad:
            print(f"error: {m.root / path} (split {split}): {problem}")
        cli.fail(f"{len(bad)} bad shard(s) in {m.root}; re-convert into it to repair")
    print(f"verified: {m.root} ({'sizes and counts' if flags.FLAGS.quick else 'sha256'})")


def _load_for_hashing(path: str) -> manifest_lib.Manifest:
    """The manifest, reporting every bad shard rather than stopping at the first."""
    try:
        return manifest_lib.load(path)
    except manifest_lib.ManifestError as e:
        if "shard" not in str(e):
            raise
        return manifest_lib.read_unchecked(path)


if __name__ == "__main__":
    cli.run(main)
