"""Integrated calcium scoring over a manifest split, a COCA release, DICOM folders or NIfTI files.

    python tools/infer.py --config configs/infer.py \
        --config.probe_workdir=runs/probe --config.segmenter_workdir=runs/seg \
        --config.source.kind=release --config.source.path=/data/coca \
        --config.out_dir=runs/infer [--config.mode=both] [--config.write_nifti=True] \
        [--config.write_seg=True]

Writes OUT/results.csv, OUT/studies/*.json, OUT/summary.json (throughput), optional
OUT/nifti/<study>.ct.nii.gz + <study>.<mode>.labels.nii.gz (on the DICOM's geometry),
optional OUT/seg/<study>.<mode>.labels.seg.dcm (DICOM SEG) and <study>.<mode>.scores.sr.dcm
(DICOM SR) for DICOM sources and, when ground truth is available, OUT/report/report.md.
A study that fails to read gets an error row; the rest complete. A re-run into the same
OUT skips the studies already scored with the same models and source
(``--config.resume=False`` scores them all again). A progress bar with ETA runs on
stderr; the last line says ``N scored, M skipped, K failed``. Exit status 0, or 1 when
every study failed; 2 for a config value out of range (one ``error:`` line, before any
work starts).
"""

import json
import sys

import tqdm
from absl import flags
from ml_collections import config_flags

from dinolg_jax.inference import config_checks
from dinolg_jax.runtime import cli, workdirs
from dinolg_jax.runtime import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Inference config file.")
_INIT_DISTRIBUTED = mesh_lib.define_distributed_flags()
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    workdirs.check_infer_config(_CONFIG.value)  # paths and modes, before any model loads
    config_checks.check_infer_values(_CONFIG.value)  # values in range, likewise
    _INIT_DISTRIBUTED()
    from dinolg_jax.inference import batch  # after distributed init: it touches devices

    summary = batch.infer_from_config(
        _CONFIG.value, progress=lambda tasks: tqdm.tqdm(tasks, desc="studies", unit="study")
    )
    for mode, m in summary["modes"].items():
        line = {k: m[k] for k in ("studies", "ok", "slices", "segmented_slices")}
        line.update(
            mode=mode,
            errors=len(m["errors"]),
            slices_per_s=m["slices_per_s"],
            studies_per_s=m["studies_per_s"],
            # Over the whole run's wall time, reading (prefetched) included.
            end_to_end_studies_per_s=m["end_to_end_studies_per_s"],
            end_to_end_slices_per_s=m["slices"] / summary["wall_s"] if summary["wall_s"] else None,
        )
        print(json.dumps(line))
    print(f"outputs: {_CONFIG.value.out_dir}")
    if summary.get("report"):
        print(f"report: {summary['report']}")
    n = summary["studies"]
    print(f"{n['scored']} scored, {n['skipped']} skipped, {n['failed']} failed", flush=True)
    if n["failed"] and n["failed"] == sum(n.values()):
        sys.exit(cli.EXIT_DATA)  # every study failed: the run produced nothing


if __name__ == "__main__":
    cli.run(main)
