"""Score one study (a DICOM series folder or a NIfTI CT in HU) and print its report;
write outputs a clinician can open.

    python tools/score_study.py DICOM_DIR|CT.nii.gz --workdir runs/demo \
        [--probe_workdir runs/demo/probe] [--segmenter_workdir runs/demo/segment] \
        [--out score_out] [--mode gated|unet_only] [--threshold_hu 130] \
        [--model_spacing_mm MM] [--series_uid UID]

``--workdir W`` stands for ``--probe_workdir W/probe --segmenter_workdir W/segment``.
A study of any pixel spacing and size is scored: the models see it resampled to the
spacing they were trained at (``inference/resolution.py``), and everything is written
and scored on the study's own grid. ``--model_spacing_mm`` states that spacing for
workdirs whose training data is gone (otherwise read from their manifest). A study
folder holding several series is read at the non-contrast axial series closest to 3 mm
(``inference/series_choice.py``); ``--series_uid`` forces one. The report names the
series read and why, and lists the study's off-domain warnings (slice thickness, tube
voltage, contrast, spacing / field of view outside the segmenter's training range;
``inference/domain_warnings.py``), which never change a score.
Writes into OUT: ``ct.nii.gz`` (int16 HU) and ``labels.nii.gz`` (uint8, 1 RCA 2 LAD
3 LCA 4 LCX; the scored voxels only) on the series' real geometry (a NIfTI input's own
grid), so they overlay it in 3D Slicer; ``labels.seg.dcm``, a DICOM SEG referencing the
source slices (DICOM input whose files carry the UIDs it needs); and one PNG overlay per
slice with calcium.
"""

from pathlib import Path

from absl import app, flags

from configs import common
from dinolg_jax.runtime import cli, workdirs

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder holding probe/ and segment/.")
_PROBE = flags.DEFINE_string("probe_workdir", None, "Probe workdir (default WORKDIR/probe).")
_SEG = flags.DEFINE_string("segmenter_workdir", None, "U-Net workdir (default WORKDIR/segment).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default ./score_<folder name>).")
_MODE = flags.DEFINE_enum("mode", "gated", ["gated", "unet_only"], "Integrated or U-Net only.")
_THRESHOLD_HU = flags.DEFINE_float("threshold_hu", 130.0, "Calcium threshold (147 at 100 kVp).")
_CONNECTIVITY = flags.DEFINE_enum("connectivity", "4", ["4", "8"], "Lesion connectivity.")
_MIN_AREA = flags.DEFINE_float("min_area_mm2", 1.0, "Minimum lesion area, mm^2.")
_SERIES_UID = flags.DEFINE_string(
    "series_uid", "", "SeriesInstanceUID to score in a DICOM folder holding several series."
)
_MODEL_SPACING = flags.DEFINE_float(
    "model_spacing_mm", None, "Pixel spacing (mm) the models were trained at, when unrecorded."
)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: score_study.py DICOM_DIR|CT.nii.gz --workdir W")
    from dinolg_jax.inference import domain_warnings, loading, nifti_input, study_report
    from dinolg_jax.runtime import mesh as mesh_lib

    folder = Path(argv[1])
    is_nifti = nifti_input.is_nifti_path(folder)
    base = Path(_WORKDIR.value) if _WORKDIR.value else None
    config = common.infer_config()  # the one inference shape (configs/infer.py)
    config.probe_workdir = _PROBE.value or (str(base / "probe") if base else "")
    config.segmenter_workdir = _SEG.value or (str(base / "segment") if base else "")
    config.batch_size = 16
    config.scoring.threshold_hu = _THRESHOLD_HU.value
    config.scoring.connectivity = int(_CONNECTIVITY.value)
    config.scoring.min_area_mm2 = _MIN_AREA.value
    if _MODEL_SPACING.value is not None and _MODEL_SPACING.value <= 0:
        raise app.UsageError(f"--model_spacing_mm must be positive, got {_MODEL_SPACING.value}")
    if is_nifti:
        if not folder.is_file():
            raise app.UsageError(f"{folder}: no such NIfTI file")
        if _SERIES_UID.value:
            raise app.UsageError("--series_uid chooses a series of a DICOM folder, not of NIfTI")
        workdirs.require(config.segmenter_workdir, "segment", "--segmenter_workdir")
        if _MODE.value == "gated":
            workdirs.require(config.probe_workdir, "probe", "--probe_workdir")
    else:
        workdirs.check_score_study(
            argv[1], config.probe_workdir, config.segmenter_workdir, _MODE.value
        )
    pipe = loading.build_pipeline(
        config,
        mesh_lib.make_mesh(),
        need_gate=_MODE.value == "gated",
        model_spacing_mm=_MODEL_SPACING.value,
    )
    study, result, labels = study_report.score_folder(
        pipe, folder, _MODE.value, series_uid=_SERIES_UID.value
    )
    warnings = domain_warnings.study_warnings(
        study, domain=domain_warnings.trained_domain(config.segmenter_workdir)
    )
    print(study_report.format_report(result, warnings, study_report.series_reason(study)))
    name = nifti_input.study_id_of(folder) if is_nifti else folder.name
    out = Path(_OUT.value or f"score_{name}")
    written = study_report.write_outputs(out, study, result, labels)
    print(f"overlays: {len(written['overlays'])} PNG in {out}")
    print(f"NIfTI: {', '.join(str(p) for p in written['nifti'])}")
    print(f"DICOM SEG: {written['seg'] or written['seg_skipped']}")


if __name__ == "__main__":
    cli.run(main)
