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

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.probe_workdir = ""  # train/probe.py workdir (encoder + probe + threshold)
    c.encoder_workdir = ""  # "" -> the encoder named in the probe workdir's config.json
    c.segmenter_workdir = ""  # tools/segment.py workdir
    c.source = ml_collections.ConfigDict()
    c.source.kind = "manifest"  # manifest | release | dicom
    c.source.path = ""
    c.source.split = "test"  # manifest only
    c.source.release_kind = "gated"  # release only: gated | nongated
    c.out_dir = ""
    c.mode = "both"  # gated | unet_only | both
    c.threshold = -1.0  # gate threshold; -1: the probe's own (chosen on val)
    c.batch_size = 32  # gate batch (global, rounded up to the device count)
    c.seg_batch_size = 0  # U-Net batch; 0: batch_size
    c.write_nifti = False  # label and CT volumes as .nii.gz on the DICOM's geometry (Slicer)
    c.write_seg = False  # labels as DICOM SEG (OUT/seg/), for studies read from DICOM
    c.report = True  # write OUT/report/report.md when ground truth is available
    c.note = ""  # a line stated in the report (e.g. "demo-size run")
    c.scoring = ml_collections.ConfigDict()
    c.scoring.threshold_hu = 130.0  # 147 for 100 kVp protocols
    c.scoring.connectivity = 4
    c.scoring.min_area_mm2 = 1.0
    c.scoring.thickness_normalisation = True
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    return c
