"""Integrated scoring of many studies: gate (encoder + probe) -> U-Net -> Agatston.

    python tools/infer.py --config configs/infer.py \
        --config.probe_workdir=runs/probe --config.segmenter_workdir=runs/seg \
        --config.source.kind=manifest --config.source.path=data/manifest.json \
        --config.source.split=test --config.out_dir=runs/infer

``source.kind``: ``manifest`` (a split of a converted dataset, with ground truth),
``release`` (a COCA release: ``release_kind`` gated, with its annotations as ground
truth, or nongated, compared with scores.xlsx), ``dicom`` (each subfolder of
``source.path`` is one study, its longest series read recursively; no ground truth).
``mode``: ``gated`` (the integrated system), ``unet_only`` (the paper's comparison:
U-Net on every slice) or ``both``. The probe workdir holds the encoder + probe export
and the threshold chosen on val (``threshold = -1`` uses it). Expect
``OUT/results.csv``, ``OUT/studies/*.json``, ``OUT/summary.json`` (throughput), with
``write_nifti`` ``OUT/nifti/<study>.ct.nii.gz`` + ``<study>.<mode>.labels.nii.gz`` (on
the DICOM's geometry), with ``write_seg`` ``OUT/seg/<study>.<mode>.labels.seg.dcm``
(DICOM sources) and, with ground truth, ``OUT/report/report.md``.
"""

from configs import common


def get_config(arg=None):
    """``configs/common.py:infer_config``, whose lines give every field and its value."""
    if arg:
        raise ValueError(f"configs/infer.py takes no argument, got {arg!r}")
    return common.infer_config()
