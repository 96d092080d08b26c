"""tools/score_study.py's path on a hand-built DICOM unlike the model's training slices.

The series has non-square pixels (0.45 x 0.6 mm), another spacing and size than the
model's 2 mm grid, and is stored rotated by 180 degrees. A stand-in segmenter (every
pixel >= 130 HU is RCA, at the model grid) runs through the resampling; the outputs are
checked against SimpleITK's own reading of the DICOM files (world positions within
0.01 mm, HU identical) and the written labels against the scored lesions.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from fake_ct import make_ct

from dinolg_jax.inference import nifti, nifti_input, study_report, system
from dinolg_jax.inference import seg as seg_lib
from dinolg_jax.inference.resolution import ModelGrid
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.scoring.agatston import agatston

TOL_MM = 0.01
ROWS, COLS, ZS = 96, 80, (-42.0, -39.0, -36.0, -33.0, -30.0, -27.0)  # 5+ slices: not a scout
SPACING = (0.45, 0.6)  # rows, columns (mm)
ROT180 = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def _stored(k: int) -> np.ndarray:
    """Stored pixels of slice k (HU + 1024): soft tissue 40 HU with air (-1000 HU) in the
    first 4 rows, a 600 HU plaque of 7.2 x 7.2 mm on slices 1 and 2, a 250 HU rim above
    threshold along it on slice 2, and a 1 x 3 px spot of 1500 HU (0.81 mm2, below the
    minimum area, inside one 2 mm model pixel) on slice 3."""
    hu = np.full((ROWS, COLS), 40, np.int16)
    hu[:4] = -1000
    if k in (1, 2):
        hu[40:56, 30:42] = 600
    if k == 2:
        hu[39, 30:42] = 250
    if k == 3:
        hu[70, 20:23] = 1500
    return (hu + 1024).astype(np.uint16)


def _series(folder: Path) -> None:
    for k, z in enumerate(ZS):
        make_ct(
            folder / f"im{k}.dcm",
            z=z,
            instance=20 - k,  # numbered from the top, as scanners often do
            pixels=_stored(k),
            spacing=SPACING,
            iop=ROT180,
            ipp_xy=(60.0, 45.5),
        )


def _seg_apply(params, x):
    del params
    return jax.nn.one_hot(jnp.where(x[..., 0] >= 0.13, 1, 0), 5) * 10.0


def _pipeline() -> system.CacPipeline:
    grid = ModelGrid((2.0, 2.0), (32, 32), origin="test")
    seg = system.SliceModel(
        _seg_apply, {}, lambda hu: (hu.astype(np.float32) / 1000.0)[..., None], "t", (32, 32), grid
    )
    return system.CacPipeline(seg, mesh_lib.make_mesh(), batch_size=8)


def test_flipped_non_square_dicom_scored_through_the_model_grid(tmp_path: Path) -> None:
    _series(tmp_path / "dcm")
    vol, res, labels = study_report.score_folder(_pipeline(), tmp_path / "dcm", "unet_only")
    assert res.resampled["segmenter"].startswith("2 x 2 mm pixels, 32 x 32 px")
    assert vol.source.reorientation.describe() == "rows and columns flipped"
    out = study_report.write_outputs(tmp_path / "out", vol, res, labels)

    # The plaque by hand: 16 x 12 px of 0.27 mm2 at 600 HU on slices 1 and 2 (51.84 mm2 x
    # weight 4 each), with the 250 HU rim row joined to it on slice 2 (12 px: same
    # lesion, max HU 600); thickness 3 mm: factor 1. Through the 2 mm grid and back the
    # mask's corners round off (bilinear), so a corner voxel may be lost: within 1 %.
    px = SPACING[0] * SPACING[1]
    plaque = 4 * (192 * px) + 4 * (204 * px)
    assert abs(res.summary["total"] - plaque) <= 0.01 * plaque
    assert res.summary["per_vessel"]["RCA"] == res.summary["total"]
    assert len(res.scores.lesions) == 2

    # labels.nii.gz holds exactly the scored voxels: none below 130 HU, none outside the
    # plaque, as many as the lesions' volume says, and scoring them again agrees.
    back, _ = nifti.read_nifti(tmp_path / "out" / "labels.nii.gz")
    np.testing.assert_array_equal(back, labels)
    assert not (vol.hu[back > 0] < 130).any()
    assert not (back[:, :, :] > 0)[vol.hu < 250].any() and not (back[3] > 0).any()
    voxels = res.summary["volume_mm3"] / (px * vol.slice_thickness_mm)
    assert int((back > 0).sum()) == round(voxels) and abs(voxels - round(voxels)) < 1e-6
    again = agatston(vol.hu, back, vol.pixel_mm, vol.slice_thickness_mm)
    assert again.total == res.scores.total and len(again.lesions) == len(res.scores.lesions)
    # The small spot (stored row 70, columns 20-22; rotated: row 25, columns 57-59 of
    # canonical slice 3) is found but not scored: it is in result.unscored, not in labels.
    spot = {(3, ROWS - 1 - 70, COLS - 1 - c) for c in (20, 21, 22)}
    assert len(res.unscored) and {tuple(p) for p in res.unscored.tolist()} <= spot

    # NIfTI against SimpleITK's reading of the DICOM: world positions and HU.
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(tmp_path / "dcm"))
    reader.SetFileNames(files)
    ref = reader.Execute()
    ct = sitk.ReadImage(str(tmp_path / "out" / "ct.nii.gz"))
    lab = sitk.ReadImage(str(tmp_path / "out" / "labels.nii.gz"))
    z, h, w = vol.hu.shape
    for k in range(z):
        for r in (0, 40, h - 1):
            for c in (0, 31, w - 1):
                ours = np.asarray(ct.TransformIndexToPhysicalPoint((c, r, k)))
                np.testing.assert_allclose(ours, vol.geometry.world_mm(k, r, c), atol=TOL_MM)
                idx = ref.TransformPhysicalPointToIndex(tuple(float(v) for v in ours))
                np.testing.assert_allclose(ref.TransformIndexToPhysicalPoint(idx), ours,
                                           atol=TOL_MM)  # fmt: skip
                assert ref[idx] == ct[c, r, k] == vol.hu[k, r, c]
    on_ref = sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    ref_hu = sitk.GetArrayFromImage(ref)  # the DICOM as stored, SimpleITK's axes
    ref_lab = sitk.GetArrayFromImage(on_ref)
    assert int((ref_lab > 0).sum()) == int((back > 0).sum())
    assert not (ref_hu[ref_lab > 0] < 130).any()

    # SEG: each frame references a source file and lies where SimpleITK puts that slice.
    ds = pydicom.dcmread(out["seg"])
    uid_to_sitk = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: i
                   for i, f in enumerate(files)}  # fmt: skip
    frames = ds.PerFrameFunctionalGroupsSequence
    assert len(frames) == 2  # slices 1 and 2 hold labels
    for i, frame in enumerate(frames):
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = uid_to_sitk[uid]
        pos = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(pos, ref.TransformIndexToPhysicalPoint((0, 0, k)), atol=TOL_MM)
        mask = ds.pixel_array[i] > 0  # the SEG frame on the stored pixel grid
        np.testing.assert_array_equal(mask, ref_lab[k] > 0)
    np.testing.assert_array_equal(seg_lib.read_seg_labels(out["seg"], vol), labels)


def test_overlay_titles_name_instance_number_position_window_and_sides(tmp_path: Path) -> None:
    _series(tmp_path / "dcm")
    vol, res, labels = study_report.score_folder(_pipeline(), tmp_path / "dcm", "unet_only")
    # canonical slice 2 is file im2.dcm (z = -36 mm), InstanceNumber 18
    _, title, _ = study_report.overlay_slice(vol, res, labels, 2)
    assert "InstanceNumber 18, z = -36.0 mm" in title
    assert "window -200 to 800 HU (W 1000 L 300)" in title
    assert study_report.orientation_markers(vol) == {
        "right": "L", "left": "R", "bottom": "P", "top": "A"
    }  # fmt: skip
    paths = study_report.write_overlays(tmp_path / "png", vol, res, labels)
    assert [p.name for p in paths] == ["slice_0001.png", "slice_0002.png", "slice_0003.png"]
    report = study_report.format_report(res)
    assert "Resampled for the segmenter: 2 x 2 mm pixels" in report


def test_a_nifti_study_is_scored_and_written_on_its_own_grid(tmp_path: Path) -> None:
    _series(tmp_path / "dcm")
    vol, res, res_labels = study_report.score_folder(_pipeline(), tmp_path / "dcm", "unet_only")
    nifti.write_study(tmp_path / "in.nii.gz", None, vol, None)
    nvol, nres, nlabels = study_report.score_folder(_pipeline(), tmp_path / "in.nii.gz",
                                                    "unet_only")  # fmt: skip
    assert nvol.kind == "nifti" and isinstance(nvol.source, nifti_input.NiftiSource)
    np.testing.assert_array_equal(nvol.hu, vol.hu)
    np.testing.assert_array_equal(nlabels, res_labels)  # the same voxels scored
    # NIfTI stores the spacing as float32 and carries no calcium mass factor (mass None)
    assert abs(nres.summary["total"] - res.summary["total"]) < 1e-5
    assert nres.summary["mass_mg"] is None and res.summary["mass_mg"] is not None
    out = study_report.write_outputs(tmp_path / "out", nvol, nres, nlabels)
    assert out["seg"] is None and "not read from DICOM" in out["seg_skipped"]
    src = sitk.ReadImage(str(tmp_path / "in.nii.gz"))
    lab = sitk.ReadImage(str(tmp_path / "out" / "labels.nii.gz"))
    assert lab.GetSize() == src.GetSize()
    np.testing.assert_allclose(lab.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(lab.GetDirection(), src.GetDirection(), atol=1e-6)


# Two series of one study folder, 16 x 16 px at 0.4 mm: A is 3 mm at 120 kVp (what the
# series choice takes), B 1 mm at 100 kVp with its plaque elsewhere (rows 10-13).
UID_A, UID_B = "1.2.826.0.1.3680043.10.999.71", "1.2.826.0.1.3680043.10.999.72"


def _two_series_study(folder: Path) -> dict[str, np.ndarray]:
    """Writes series A (3, 3 mm) and B (7, 1 mm) into ``folder``; returns each one's HU
    [Z, H, W] as written (axial, already canonical)."""
    out = {}
    for uid, number, step, kvp, rows in ((UID_A, 3, 3.0, 120.0, slice(2, 6)),
                                         (UID_B, 7, 1.0, 100.0, slice(10, 14))):  # fmt: skip
        hu = np.full((6, 16, 16), 40, np.int16)
        hu[:, 0] = -1000
        hu[2:4, rows, 6:10] = 600
        for k in range(6):
            make_ct(folder / f"s{number}" / f"im{k}.dcm", z=step * k, instance=k + 1,
                    pixels=(hu[k] + 1024).astype(np.uint16), series_uid=uid,
                    series_number=number, thickness=step, kvp=kvp)  # fmt: skip
        out[uid] = hu
    return out


def test_series_uid_forces_a_series_and_the_report_lists_its_warnings(tmp_path: Path) -> None:
    from dinolg_jax.inference import domain_warnings

    written = _two_series_study(tmp_path / "study")
    grid = ModelGrid((0.4, 0.4), (16, 16), origin="test")  # the study's own: not resampled
    seg = system.SliceModel(
        _seg_apply, {}, lambda hu: (hu.astype(np.float32) / 1000.0)[..., None], "t", (16, 16), grid
    )
    pipe = system.CacPipeline(seg, mesh_lib.make_mesh(), batch_size=8)
    vol, _, _ = study_report.score_folder(pipe, tmp_path / "study", "unet_only")
    assert vol.report.series_uid == UID_A  # the 3 mm series by default
    np.testing.assert_array_equal(vol.hu, written[UID_A])
    assert domain_warnings.study_warnings(vol) == []
    forced, fres, _ = study_report.score_folder(
        pipe, tmp_path / "study", "unet_only", series_uid=UID_B
    )
    np.testing.assert_array_equal(forced.hu, written[UID_B])
    reason = study_report.series_reason(forced)
    assert reason.startswith("series 7 (6 slices, 1 mm") and reason.endswith("forced by series_uid")
    # 1 mm and 100 kVp: exactly the thickness and tube-voltage warnings (the 16 px field
    # holds too few soft-tissue voxels for the contrast proxy; no domain given).
    warnings = domain_warnings.study_warnings(forced)
    assert warnings == [
        "slice thickness 1 mm outside 2.5-3 mm (Agatston is defined at 3 mm)",
        "tube voltage 100 kVp (Agatston's 130 HU is defined at 120 kVp)",
    ]
    text = study_report.format_report(fres, warnings, reason).splitlines()
    at = text.index("Off-domain warnings (2; the scores are unchanged):")
    assert text[at + 1 : at + 3] == [f"  - {w}" for w in warnings]
    assert f"Series: {reason}" in text
    # the plaque of B by hand: 4 x 4 px of 0.16 mm2 at 600 HU (weight 4) on two 1 mm
    # slices (thickness factor 1/3)
    assert fres.summary["total"] == pytest.approx(2 * 4 * 16 * 0.16 / 3, rel=1e-6)
    assert not fres.resampled
    nifti.write_study(tmp_path / "b.nii.gz", None, forced, None)
    with pytest.raises(ValueError, match="a NIfTI file has no series"):
        study_report.load_study(tmp_path / "b.nii.gz", series_uid=UID_B)
