"""The demo: the whole pipeline on the synthetic phantom, stage by stage.

    python tools/demo.py --workdir demo_out [--gated 12] [--nongated 3] [--size 512]

Stages (each a function of the shared context dict, run in order; later issues append
training and evaluation stages):

1. ``phantom``: a COCA-format release under ``<workdir>/phantom`` (reused when its
   truth.json was made with the same parameters).
2. ``convert``: ArrayRecord shards, manifest.json and report.json under
   ``<workdir>/records``.
3. ``summary``: the split table and the conversion report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absl import app, flags

from dinolg_jax.data import convert, convert_report, phantom

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Folder for every demo output.")
_GATED = flags.DEFINE_integer("gated", 12, "Gated phantom patients with DICOM.")
_NONGATED = flags.DEFINE_integer("nongated", 3, "Non-gated phantom studies.")
_SIZE = flags.DEFINE_integer("size", 512, "Phantom image size (rows = columns).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the phantom and the splits.")
_WORKERS = flags.DEFINE_integer("workers", min(2, os.cpu_count() or 1), "Processes.")

Context = dict[str, Any]


def stage_phantom(ctx: Context) -> None:
    release = Path(ctx["workdir"]) / "phantom"
    params = {"seed": ctx["seed"], "size": ctx["size"], "slices": [34, 60]}
    truth_path = release / "truth.json"
    if truth_path.is_file():
        truth = json.loads(truth_path.read_text())
        same = all(truth.get(k) == v for k, v in params.items())
        if same and len(truth["gated"]) == ctx["gated"] + 1:
            if len(truth["nongated"]) == ctx["nongated"]:
                print(f"[phantom] reusing {release}")
                ctx["release"] = release
                return
    phantom.make_release(
        release,
        n_gated=ctx["gated"],
        n_nongated=ctx["nongated"],
        seed=ctx["seed"],
        size=ctx["size"],
        slices=tuple(params["slices"]),
        workers=ctx["workers"],
    )
    print(f"[phantom] wrote {release}")
    ctx["release"] = release


def stage_convert(ctx: Context) -> None:
    out = Path(ctx["workdir"]) / "records"
    ctx["report"] = convert.convert_release(
        ctx["release"], out, seed=ctx["seed"], workers=ctx["workers"], shards_per_split=2
    )
    ctx["records"] = out
    print(f"[convert] wrote {out}/manifest.json and report.json")


def stage_summary(ctx: Context) -> None:
    print(convert_report.format_summary(ctx["report"]))


STAGES: list[tuple[str, Callable[[Context], None]]] = [
    ("phantom", stage_phantom),
    ("convert", stage_convert),
    ("summary", stage_summary),
]


def main(argv: list[str]) -> None:
    del argv
    ctx: Context = {
        "workdir": _WORKDIR.value,
        "gated": _GATED.value,
        "nongated": _NONGATED.value,
        "size": _SIZE.value,
        "seed": _SEED.value,
        "workers": _WORKERS.value,
    }
    Path(ctx["workdir"]).mkdir(parents=True, exist_ok=True)
    for name, stage in STAGES:
        start = time.perf_counter()
        stage(ctx)
        print(f"[{name}] {time.perf_counter() - start:.1f} s\n")


if __name__ == "__main__":
    app.run(main)
