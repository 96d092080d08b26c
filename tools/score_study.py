"""Score one DICOM study and print its report; write outputs a clinician can open.

    python tools/score_study.py DICOM_DIR --workdir runs/demo \
        [--probe_workdir runs/demo/probe] [--segmenter_workdir runs/demo/segment] \
        [--out score_out] [--mode gated|unet_only] [--threshold_hu 130]

``--workdir W`` stands for ``--probe_workdir W/probe --segmenter_workdir W/segment``.
Writes into OUT: ``ct.nii.gz`` (int16 HU) and ``labels.nii.gz`` (uint8, 1 RCA 2 LAD
3 LCA 4 LCX) on the series' real geometry, so they overlay the DICOM in 3D Slicer;
``labels.seg.dcm``, a DICOM SEG referencing the source slices (when the files carry the
UIDs it needs); and one PNG overlay per slice with calcium.
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


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: score_study.py DICOM_DIR --workdir W")
    from dinolg_jax.inference import loading, study_report
    from dinolg_jax.runtime import mesh as mesh_lib

    folder = Path(argv[1])
    base = Path(_WORKDIR.value) if _WORKDIR.value else None
    config = common.infer_config()  # the one inference shape (configs/infer.py)
    config.probe_workdir = _PROBE.value or (str(base / "probe") if base else "")
    config.segmenter_workdir = _SEG.value or (str(base / "segment") if base else "")
    config.batch_size = 16
    config.scoring.threshold_hu = _THRESHOLD_HU.value
    config.scoring.connectivity = int(_CONNECTIVITY.value)
    config.scoring.min_area_mm2 = _MIN_AREA.value
    workdirs.check_score_study(argv[1], config.probe_workdir, config.segmenter_workdir, _MODE.value)
    pipe = loading.build_pipeline(config, mesh_lib.make_mesh(), need_gate=_MODE.value == "gated")
    study, result, labels = study_report.score_folder(pipe, folder, _MODE.value)
    print(study_report.format_report(result))
    out = Path(_OUT.value or f"score_{folder.name}")
    written = study_report.write_outputs(out, study, result, labels)
    print(f"overlays: {len(written['overlays'])} PNG in {out}")
    print(f"NIfTI: {', '.join(str(p) for p in written['nifti'])}")
    print(f"DICOM SEG: {written['seg'] or written['seg_skipped']}")


if __name__ == "__main__":
    cli.run(main)
