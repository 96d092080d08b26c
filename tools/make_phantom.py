"""Writes a synthetic COCA release (the phantom) in the real release's layout and formats.

    python tools/make_phantom.py --out /tmp/phantom --patients 50 --nongated 10 --seed 0 \
        [--size 512] [--min_slices 34] [--max_slices 60] [--workers 1]

Flags out of range (``--patients 0``, ``--size`` below 16, a negative seed, ``--workers 0``,
``--min_slices`` above ``--max_slices``) stop with one ``error:`` line and exit 2 before
anything is written. Prints a one-line summary (patients per risk category, slices,
calcified slices) and the time taken. Same flags -> same bytes. ``<out>/truth.json``
holds the per-patient scores.
"""

from __future__ import annotations

import collections
import time

from absl import flags

from dinolg_jax.phantom import coca_release
from dinolg_jax.runtime import cli

_OUT = flags.DEFINE_string("out", None, "Release root to write.", required=True)
_PATIENTS = flags.DEFINE_integer("patients", 8, "Gated patients with DICOM.", lower_bound=1)
_NONGATED = flags.DEFINE_integer("nongated", 2, "Non-gated studies.", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Seed: everything is a function of it.", lower_bound=0)
_SIZE = flags.DEFINE_integer("size", 512, "Image rows = columns.", lower_bound=16)
_MIN_SLICES = flags.DEFINE_integer("min_slices", 34, "Fewest slices per series.", lower_bound=1)
_MAX_SLICES = flags.DEFINE_integer("max_slices", 60, "Most slices per series.", lower_bound=1)
_WORKERS = flags.DEFINE_integer(
    "workers", 1, "Processes (output does not depend on it).", lower_bound=1
)


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    if _MIN_SLICES.value > _MAX_SLICES.value:
        raise cli.UsageError(
            f"--min_slices={_MIN_SLICES.value} is above --max_slices={_MAX_SLICES.value}"
        )
    start = time.perf_counter()
    truth = coca_release.make_release(
        _OUT.value,
        n_gated=_PATIENTS.value,
        n_nongated=_NONGATED.value,
        seed=_SEED.value,
        size=_SIZE.value,
        slices=(_MIN_SLICES.value, _MAX_SLICES.value),
        workers=_WORKERS.value,
    )
    seconds = time.perf_counter() - start
    studies = [*truth["gated"].values(), *truth["nongated"].values()]
    slices = sum(s["n_slices"] for s in studies if s.get("has_dicom", True))
    calcified = sum(len(s["calcified_slices"]) for s in truth["gated"].values())
    gated_slices = sum(s["n_slices"] for s in truth["gated"].values())
    cats = collections.Counter(s["category_paper4"] for s in truth["gated"].values())
    print(
        f"phantom {_OUT.value}: {len(truth['gated'])} gated patients "
        f"({_PATIENTS.value} with DICOM; {dict(sorted(cats.items()))}), "
        f"{len(truth['nongated'])} non-gated; {slices} slices written, "
        f"{calcified}/{gated_slices} gated slices calcified "
        f"({100 * calcified / max(gated_slices, 1):.1f}%); {seconds:.1f} s, "
        f"{slices / seconds:.1f} slices/s"
    )


if __name__ == "__main__":
    cli.run(main)
