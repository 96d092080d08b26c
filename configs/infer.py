"""Integrated scoring of many studies: gate (encoder + probe) -> U-Net -> Agatston.

    python tools/infer.py --config configs/infer.py \
        --config.probe_workdir=runs/probe --config.segmenter_workdir=runs/seg \
        --config.source.kind=manifest --config.source.path=data/manifest.json \
        --config.source.split=test --config.out_dir=runs/infer

``source.kind``: ``manifest`` (a split of a converted dataset, with its references: the
labels of gated studies, the scores.xlsx scores of non-gated ones), ``release`` (a COCA
release: ``release_kind`` gated, with its annotations as ground truth, or nongated,
compared with scores.xlsx), ``dicom`` (each subfolder of ``source.path`` is one study,
read recursively; the non-contrast axial series closest to 3 mm is scored, or the one
``source.series_uid`` names; no ground truth), ``nifti`` (each ``.nii`` / ``.nii.gz``
of ``source.path`` is one study in HU; outputs on its grid; no ground truth).
``mode``: ``gated`` (the integrated system), ``unet_only`` (the paper's comparison:
U-Net on every slice) or ``both``. The probe workdir holds the encoder + probe export
and the threshold chosen on val (``threshold = -1`` uses it). Expect
``OUT/results.csv`` (with a ``warnings`` column), ``OUT/studies/*.json``,
``OUT/summary.json`` (throughput; scored / skipped / failed), with ``write_nifti``
``OUT/nifti/<study>.ct.nii.gz`` + ``<study>.<mode>.labels.nii.gz`` (on the source's
grid), with ``write_seg`` ``OUT/seg/<study>.<mode>.labels.seg.dcm`` (DICOM SEG) and
``<study>.<mode>.scores.sr.dcm`` (DICOM SR, TID 1500) for DICOM sources and, with
ground truth, ``OUT/report/report.md``.

Fields added here to ``common.infer_config()`` (an experiment's infer stage has none of
them, and runs without them):

* ``source.series_uid``: DICOM only: score this SeriesInstanceUID in every study folder.
* ``resume``: skip a study already scored into ``out_dir`` with the same models and source.
* ``kvp_adjusted_threshold``: score a study at the published kVp-adjusted threshold where
  there is one (100 kVp: 147 HU, ``docs/agatston.md``); off: 130 HU at any kVp, with a
  warning. Either way the study's warnings say what was done.
* ``warnings``: the off-domain checks (``inference.domain_warnings``): ``thickness_mm``
  (accepted slice thickness range), ``contrast_hu`` (blood-pool proxy above which
  contrast is suspected), ``tolerance`` (relative widening of the segmenter's trained
  spacing / field-of-view range).
"""

import ml_collections

from configs import common


def get_config(arg=None):
    """``configs/common.py:infer_config`` plus the fields of the module docstring."""
    if arg:
        raise ValueError(f"configs/infer.py takes no argument, got {arg!r}")
    c = common.infer_config()
    c.source.series_uid = ""  # dicom only: force this series in every study folder
    c.resume = True  # skip studies scored with the same models and source
    c.kvp_adjusted_threshold = False  # 147 HU at 100 kVp (Nakazato et al. 2009)
    c.warnings = ml_collections.ConfigDict()
    c.warnings.thickness_mm = (2.5, 3.0)  # Agatston is defined at 3 mm
    c.warnings.contrast_hu = 120.0  # blood-pool proxy; unenhanced blood is 30-60 HU
    c.warnings.tolerance = 0.1  # around the segmenter's trained spacing / field of view
    return c
