"""Converts any CT collection (DICOM series folders or NIfTI volumes in HU) into a dataset.

    python tools/convert_folder.py --images /data/ct --out /data/ct_records \
        [--masks /data/ct_masks] [--seed 0] [--workers 4] [--shards_per_split 8]

Under --images every ``.nii`` / ``.nii.gz`` file is a study and every folder holding
other files is one DICOM series (read as COCA's are: orientation, rescale, no
identifying header value). With --masks, a NIfTI label volume per study matched by name
(``images/a/ct.nii.gz`` <-> ``masks/a/ct.nii.gz``, ``images/p1/series/`` <->
``masks/p1/series.nii.gz``; any labels 0 .. 255, on the image's voxel grid) becomes the
records' labels, DINO-LG's guided crops centre on it, and the studies with a mask are
split ~80/10/10 into train / val / test; without, every study is in pretrain. Writes
the dataset ``tools/convert_coca.py`` writes (shards, ``manifest.json``, ``report.json``
with every skipped study and file and its reason); re-running resumes. Ctrl-C stops with
one line (exit 130) and leaves no ``manifest.json``; a full disk is one ``error:`` line
naming the folder and the space needed. Pretrain on it with
``--config.data.manifest=OUT/manifest.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import flags

from dinolg_jax.runtime import cli

_IMAGES = flags.DEFINE_string("images", None, "Root of DICOM series folders / NIfTI files.")
_MASKS = flags.DEFINE_string("masks", None, "Root of NIfTI label masks matched by name.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Split seed.", lower_bound=0)
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes reading studies.", lower_bound=1)
_SHARDS = flags.DEFINE_integer(
    "shards_per_split", 4, "ArrayRecord shards per split.", lower_bound=1
)
_KEEP_CACHE = flags.DEFINE_bool("keep_cache", False, "Keep the per-study cache for re-runs.")


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    images = cli.require_dir(_IMAGES.value, "--images", "the folder of DICOM series / NIfTI")
    masks = None
    if _MASKS.value is not None:
        masks = cli.require_dir(_MASKS.value, "--masks", "the folder of NIfTI label masks")
    if not _OUT.value:
        raise cli.UsageError("--out is required: the output folder")
    if Path(_OUT.value).exists() and not Path(_OUT.value).is_dir():
        raise cli.UsageError(f"--out={_OUT.value} is a file, not a folder")
    from dinolg_jax.data import convert_folder, dataset_writer

    try:
        report = convert_folder.convert_folder(
            images,
            _OUT.value,
            masks=masks,
            seed=_SEED.value,
            workers=_WORKERS.value,
            shards_per_split=_SHARDS.value,
            keep_cache=_KEEP_CACHE.value,
        )
    except convert_folder.FolderConvertError as e:  # nothing to convert: the wrong folder
        raise cli.UsageError(str(e)) from e
    except KeyboardInterrupt:
        cli.fail(dataset_writer.interrupted_message(_OUT.value), cli.EXIT_INTERRUPTED)
    print(convert_folder.format_summary(report))
    print(json.dumps(report["timings"]))


if __name__ == "__main__":
    cli.run(main)
