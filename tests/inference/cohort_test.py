"""Cohort runs: resume, references per source kind, SR beside the SEG, NIfTI folders,
a corrupt shard named, warnings and the kVp option in results.csv."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from batch_test import THICK, build, make_study, write_dicom_series

from dinolg_jax.inference import batch, sources, sr
from dinolg_jax.runtime import mesh as mesh_lib

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


@pytest.fixture(scope="module")
def mesh8():
    return mesh_lib.make_mesh()


def _rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_resume_skips_same_models_and_source_and_rescores_changes(tmp_path: Path, mesh8) -> None:
    study = make_study()
    root = tmp_path / "dicoms"
    for name in ("a", "b", "c"):
        write_dicom_series(root / name, study.hu)
    bad = root / "c" / "IM-0003.dcm"
    bad.write_bytes(bad.read_bytes()[:-100])
    out = tmp_path / "out"
    first = batch.run_inference(build(mesh8), sources.dicom_tasks(root), out, resume=True,
                                write_seg=True, source_roots=[root])  # fmt: skip
    assert first["studies"] == {"scored": 2, "skipped": 0, "failed": 1}
    rows1 = _rows(out)
    again = batch.run_inference(build(mesh8), sources.dicom_tasks(root), out, resume=True,
                                write_seg=True, source_roots=[root])  # fmt: skip
    assert again["studies"] == {"scored": 0, "skipped": 2, "failed": 1}  # c is retried
    rows2 = _rows(out)
    assert rows2[:2] == rows1[:2]  # the skipped rows as stored, timings included
    untimed = [{k: v for k, v in r.items() if not k.startswith("t_")} for r in (rows1[2], rows2[2])]
    assert untimed[0] == untimed[1] and rows2[2]["status"] == "error"  # c read again
    assert [r.summary["total"] for r in again["results"]["gated"][:2]] == [12.0, 12.0]
    # A changed source (b's file rewritten) re-scores b; a changed model re-scores all.
    f = root / "b" / "IM-0001.dcm"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    s = batch.run_inference(build(mesh8), sources.dicom_tasks(root), out, resume=True,
                            write_seg=True)  # fmt: skip
    assert s["studies"] == {"scored": 1, "skipped": 1, "failed": 1}
    pipe = build(mesh8)
    pipe.threshold = 0.25  # another gate threshold: another model
    s = batch.run_inference(pipe, sources.dicom_tasks(root), out, resume=True, write_seg=True)
    assert s["studies"] == {"scored": 2, "skipped": 0, "failed": 1}
    # A missing requested output (the SR) re-scores that study.
    (out / "seg" / "a.gated.scores.sr.dcm").unlink()
    s = batch.run_inference(pipe, sources.dicom_tasks(root), out, resume=True, write_seg=True)
    assert s["studies"] == {"scored": 1, "skipped": 1, "failed": 1}


def test_sr_reads_back_to_the_numbers_of_results_csv(tmp_path: Path, mesh8) -> None:
    study = make_study()
    root = tmp_path / "dicoms"
    write_dicom_series(root / "a", study.hu)
    out = tmp_path / "out"
    batch.run_inference(build(mesh8), sources.dicom_tasks(root), out, write_seg=True,
                        modes=("unet_only",))  # fmt: skip
    (row,) = _rows(out)
    back = sr.read_sr_scores(out / "seg" / "a.unet_only.scores.sr.dcm")
    for v in ("RCA", "LAD", "LCA", "LCX"):
        assert back[v]["agatston"] == pytest.approx(float(row[v]), abs=1e-4)
    assert back["Total"]["agatston"] == pytest.approx(float(row["total"]), abs=1e-4) == 18.75
    assert back["Total"]["volume_mm3"] == pytest.approx(float(row["volume_mm3"]), abs=1e-4)
    assert (back["Total"]["standard5"], back["Total"]["cac_drs"]) == (row["standard5"],
                                                                    row["cac_drs"])  # fmt: skip
    import pydicom

    seg = pydicom.dcmread(out / "seg" / "a.unet_only.labels.seg.dcm")
    ds = pydicom.dcmread(out / "seg" / "a.unet_only.scores.sr.dcm")
    assert back["RCA"]["seg_uid"] == seg.SOPInstanceUID
    assert back["RCA"]["series_uid"] == "1.2.826.0.1.77"  # the source series
    assert ds.StudyInstanceUID == seg.StudyInstanceUID  # joins the source's study
    assert ds.PatientName == "" and ds.PatientID == "" and ds.get("PatientBirthDate", "") == ""
    text = (out / "seg" / "a.unet_only.scores.sr.dcm").read_bytes()
    for value in (b"Secret", b"424242", b"20010911", b"Fake General"):
        assert value not in text


def test_references_per_source_kind_against_the_phantom_truth(tmp_path: Path, mesh8) -> None:
    """Gated: the annotations; non-gated: scores.xlsx, from a release and from a converted
    manifest alike; a study without a reference has blank true_* cells, never 0."""
    from dinolg_jax.data import convert
    from dinolg_jax.phantom import coca_release

    rel = tmp_path / "release"
    truth = coca_release.make_release(rel, n_gated=6, n_nongated=2, seed=1, size=32,
                                      slices=(8, 10))  # fmt: skip
    batch.run_inference(build(mesh8), sources.release_tasks(rel, "nongated"), tmp_path / "ng",
                        modes=("unet_only",))  # fmt: skip
    rows = {r["study"]: r for r in _rows(tmp_path / "ng")}
    assert len(rows) == 2
    for t in truth["nongated"].values():  # the sheet's total, kept even when it
        row = rows[f"nongated-{t['folder']}"]  # disagrees with the vessels (total_mismatch)
        assert float(row["true_total"]) == pytest.approx(t["xlsx_total"], abs=1e-4)
        assert float(row["true_LAD"]) == pytest.approx(t["LAD"], abs=1e-4)
    convert.convert_release(rel, tmp_path / "conv", seed=0)
    tasks = sources.manifest_tasks(tmp_path / "conv", "pretrain")
    refs = {t.study_id: t.reference for t in tasks}
    man = json.loads((tmp_path / "conv" / "manifest.json").read_text())
    out = tmp_path / "m"
    batch.run_inference(build(mesh8), tasks, out, modes=("unet_only",))
    kinds = set()
    for row in _rows(out):
        entry = man["studies"][row["study"]]
        kinds.add((entry["kind"], entry["agatston"] is None))
        if entry["kind"] == "nongated":
            assert refs[row["study"]]["total"] == entry["agatston"]["total"]
            assert float(row["true_total"]) == pytest.approx(entry["agatston"]["total"], abs=1e-4)
        elif entry["agatston"] is None:
            assert row["true_total"] == ""  # no reference: blank
        else:
            pid = str(int(row["study"].split("-")[1]))
            assert float(row["true_total"]) == pytest.approx(truth["gated"][pid]["total"], abs=1e-3)
    assert {("gated", False), ("nongated", False)} <= kinds


def test_a_flipped_byte_in_a_shard_is_an_error_row_naming_the_shard(tmp_path: Path, mesh8) -> None:
    from dinolg_jax.phantom import synthetic_records

    manifest = synthetic_records.write_dataset(
        tmp_path / "records", size=16, studies=2, slices_per_study=4, shards=2, splits=("test",)
    )
    man = json.loads(Path(manifest).read_text())
    shard = Path(manifest).parent / man["splits"]["test"]["shards"][1]["path"]
    data = bytearray(shard.read_bytes())
    data[300] ^= 0xFF  # inside the first chunk's data (the rest of the file is padding)
    shard.write_bytes(bytes(data))
    summary = batch.run_inference(build(mesh8), sources.manifest_tasks(manifest, "test"),
                                  tmp_path / "out", modes=("unet_only",),
                                  source_roots=[Path(manifest).parent])  # fmt: skip
    rows = _rows(tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert shard.name in rows[1]["error_message"] and rows[1]["error_stage"] == "read"
    assert summary["studies"] == {"scored": 1, "skipped": 0, "failed": 1}


def test_nifti_folder_source_and_the_kvp_and_thickness_warnings(tmp_path: Path, mesh8) -> None:
    study = make_study()
    folder = tmp_path / "nii"
    folder.mkdir()
    ras = np.diag([-0.5, -0.5, THICK, 1.0])  # columns -> patient left, rows -> posterior
    data = np.transpose(study.hu, (2, 1, 0)).astype(np.int16) - 1000  # [x, y, z], air
    data[..., :] += 1000
    data[0, 0, :] = -1000  # one voxel of air: the reader checks the volume is in HU
    nib.save(nib.Nifti1Image(data, ras), folder / "p1.nii.gz")
    (folder / "notes.txt").write_text("not a volume")
    tasks = sources.nifti_tasks(folder)
    assert [t.study_id for t in tasks] == ["p1"]
    summary = batch.run_inference(build(mesh8), tasks, tmp_path / "out", modes=("unet_only",))
    (row,) = _rows(tmp_path / "out")
    assert float(row["total"]) == 18.75 and row["true_total"] == ""
    assert row["warnings"] == "tube voltage not recorded (Agatston's 130 HU is defined at 120 kVp)"
    assert summary["warnings"] == {"p1": [row["warnings"]]}
    # A 100 kVp DICOM study: 147 HU on request, said so; without it, only the warning.
    root = tmp_path / "dcm"
    hu = study.hu.copy()
    hu[7, 10:13, 5:8] = 140  # the LAD lesion: counted at 130 HU, not at 147
    write_dicom_series(root / "k", hu)
    for f in (root / "k").glob("*.dcm"):
        import pydicom

        ds = pydicom.dcmread(f)
        ds.KVP = 100
        ds.SliceThickness = 1.0
        ds.save_as(f)
    plain = batch.run_inference(build(mesh8), sources.dicom_tasks(root), tmp_path / "o1",
                                modes=("unet_only",))  # fmt: skip
    adjusted = batch.run_inference(build(mesh8), sources.dicom_tasks(root), tmp_path / "o2",
                                   modes=("unet_only",), kvp_adjusted=True)  # fmt: skip
    (r1,), (r2,) = _rows(tmp_path / "o1"), _rows(tmp_path / "o2")
    assert float(r1["LAD"]) == 2.25 and float(r2["LAD"]) == 0.0  # 9 px x 0.25 mm2 x w1
    assert r1["warnings"] == (
        "slice thickness 1 mm outside 2.5-3 mm (Agatston is defined at 3 mm); "
        "slice step 3 mm differs from the slice thickness 1 mm; "
        "tube voltage 100 kVp (Agatston's 130 HU is defined at 120 kVp)"
    )
    assert r2["warnings"].endswith("scored at 147 HU (Nakazato et al., J Cardiovasc Comput "
                                   "Tomogr 2009;3:394-400 (147 HU at 100 kVp))")  # fmt: skip
    assert adjusted["results"]["unet_only"][0].scores.convention["threshold_hu"] == 147.0
    assert plain["results"]["unet_only"][0].scores.convention["threshold_hu"] == 130.0
