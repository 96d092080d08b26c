"""COCA reader: calcium XML, rasterisation, self-check, score sheet, and the phantom release."""

from __future__ import annotations

import plistlib
import re
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dinolg_jax.data import coca
from dinolg_jax.phantom import coca_release
from dinolg_jax.scoring import agatston

NAMES = {
    1: "Right Coronary Artery",
    2: "Left Anterior Descending Artery",
    3: "Left Coronary Artery",
    4: "Left Circumflex Artery",
}


def _box(r0: int, r1: int, c0: int, c1: int) -> list[str]:
    """Unclosed outline whose filled pixel centres are exactly rows r0..r1, cols c0..c1.

    Vertices sit 0.496 px outside the pixel centres, like the real files' ~0.004 px
    offset from the pixel edge.
    """
    e = 0.496
    pts = [(c0 - e, r0 - e), (c1 + e, r0 - e), (c1 + e, r1 + e), (c0 - e, r1 + e)]
    return [f"({x:.3f}, {y:.3f})" for x, y in pts]


def _roi(name: str, points: list[str], z: float, hu_slice: np.ndarray | None, spacing: float):
    """An XML ROI dict; statistics computed from the expected pixels (box & HU >= 130)."""
    roi = {
        "Name": name,
        "Point_px": points,
        "Point_mm": [],
        "Center": f"(1.0, 2.0, {z:.3f})",
        "NumberOfPoints": len(points),
        "Area": 0.0,
        "Mean": 0.0,
        "Min": 0.0,
        "Max": 0.0,
        "Total": 0.0,
        "Dev": 0.0,
        "Length": 0.0,
        "IndexInImage": 0,
        "Type": 20,
    }
    if hu_slice is not None and points:
        xy = [tuple(float(v) for v in p.strip("()").split(",")) for p in points]
        r0, r1 = round(min(y for _, y in xy)), round(max(y for _, y in xy))
        c0, c1 = round(min(x for x, _ in xy)), round(max(x for x, _ in xy))
        vals = hu_slice[r0 : r1 + 1, c0 : c1 + 1]
        vals = vals[vals >= 130].astype(float)
        roi.update(
            Area=len(vals) * spacing**2 / 100,
            Mean=float(vals.mean()),
            Min=float(vals.min()),
            Max=float(vals.max()),
        )
    return roi


def _plist(path: Path, images: dict[int, list[dict]]) -> None:
    data = {
        "Images": [{"ImageIndex": k, "NumberOfROIs": len(v), "ROIs": v} for k, v in images.items()]
    }
    with path.open("wb") as f:
        plistlib.dump(data, f)


def _volume(nz: int = 4, n: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-100, 100, (nz, n, n)).astype(np.int16)
    hu[:, 3:7, 3:7] = rng.integers(130, 600, (nz, 4, 4))
    hu[:, 4, 4] = 50  # a hole below threshold inside the lesion
    hu[:, 9:12, 9:13] = rng.integers(200, 900, (nz, 3, 4))
    return hu


def test_parse_and_rasterise_match_hand_built_statistics(tmp_path):
    hu = _volume()
    z_mm = np.array([-30.0, -27.0, -24.0, -21.0])
    sp = 0.5
    rois = {
        1: [
            _roi(NAMES[1], _box(3, 6, 3, 6), -27.0, hu[1], sp),
            _roi(NAMES[1], _box(9, 11, 9, 12), -27.0, hu[1], sp),  # same vessel: union
            _roi(NAMES[1], [], -27.0, None, sp),  # empty placeholder
            _roi("Unnamed", _box(9, 11, 9, 12), -27.0, hu[1], sp),  # junk name
        ],
        3: [
            _roi(NAMES[4], _box(9, 11, 9, 12), -21.0, hu[3], sp),
            _roi(NAMES[2], _box(9, 11, 11, 12), -21.0, hu[3], sp),  # conflicts with LCX
        ],
    }
    _plist(tmp_path / "0.xml", rois)
    parsed = coca.parse_calcium_xml(tmp_path / "0.xml")
    assert [(r["image_index"], r["roi"]) for r in parsed] == [
        (1, 0), (1, 1), (1, 2), (1, 3), (3, 0), (3, 1)
    ]  # fmt: skip
    np.testing.assert_allclose(parsed[0]["points_px"][0], [2.504, 2.504])
    assert parsed[0]["center"] == (1.0, 2.0, -27.0)

    report = coca.RoiReport()
    labels = coca.rasterise_rois(parsed, hu, z_mm, (sp, sp), 3.0, report)
    expected = np.zeros_like(hu, dtype=np.uint8)
    expected[1, 3:7, 3:7] = 1
    expected[1, 9:12, 9:13] = 1
    expected[3, 9:12, 9:13] = 4  # LCX first: the LAD ROI keeps none of its pixels
    expected[hu < 130] = 0
    np.testing.assert_array_equal(labels, expected)
    assert report.rois_total == 6 and report.rois_used == 4
    assert [s.reason for s in report.skipped_rois] == ["empty placeholder", "junk name 'Unnamed'"]
    assert report.conflict_pixels == 6  # 3 rows x 2 cols claimed by LAD and LCX
    assert report.rois_per_vessel == {"RCA": 2, "LAD": 1, "LCA": 0, "LCX": 1}
    sc = report.self_check
    assert (sc.n_checked, sc.n_exact) == (4, 4)
    assert sc.worst_area_cm2 < 1e-12 and sc.worst_mean_hu < 1e-9 and sc.worst_max_hu == 0


def test_self_check_reports_disagreement():
    hu = _volume()
    z_mm = np.arange(4) * 3.0
    roi = _roi(NAMES[2], _box(3, 6, 3, 6), 3.0, hu[1], 0.5)
    roi["Area"] += 0.01  # four pixels more than rasterised
    roi["Max"] += 3
    parsed = [
        {
            "image_index": 1,
            "roi": 0,
            "name": roi["Name"],
            "points_px": np.array(
                [[float(v) for v in p.strip("()").split(",")] for p in roi["Point_px"]]
            ),
            "center": (0.0, 0.0, 3.0),
            "area": roi["Area"],
            "mean": roi["Mean"],
            "min": roi["Min"],
            "max": roi["Max"],
            "num_points": 4,
        }
    ]
    report = coca.RoiReport()
    coca.rasterise_rois(parsed, hu, z_mm, (0.5, 0.5), 3.0, report)
    sc = report.self_check
    assert (sc.n_checked, sc.n_exact) == (1, 0)
    assert sc.worst_area_cm2 == pytest.approx(0.01) and sc.worst_max_hu == pytest.approx(3)
    assert sc.mismatches[0]["image_index"] == 1


@pytest.mark.parametrize("center_z, index", [(-25.4, 1), (-27.0, 9)])
def test_center_z_mismatch_leaves_labels_out(tmp_path, center_z, index):
    hu = _volume()
    z_mm = np.array([-30.0, -27.0, -24.0, -21.0])
    _plist(tmp_path / "1.xml", {index: [_roi(NAMES[1], _box(3, 6, 3, 6), center_z, hu[1], 0.5)]})
    report = coca.RoiReport()
    out = coca.rasterise_rois(
        coca.parse_calcium_xml(tmp_path / "1.xml"), hu, z_mm, (0.5, 0.5), 3.0, report
    )
    assert out is None
    assert "Center z mismatch" in report.labels_left_out


def test_bad_xml_raises(tmp_path):
    (tmp_path / "a.xml").write_text("not a plist")
    with pytest.raises(coca.CocaError, match="not a readable plist"):
        coca.parse_calcium_xml(tmp_path / "a.xml")
    with (tmp_path / "b.xml").open("wb") as f:
        plistlib.dump({"Frames": []}, f)
    with pytest.raises(coca.CocaError, match="'Images'"):
        coca.parse_calcium_xml(tmp_path / "b.xml")
    _plist(tmp_path / "c.xml", {0: [{"Name": NAMES[1], "Point_px": ["(1, 2, 3)"]}]})
    with pytest.raises(coca.CocaError, match="expected 2 numbers"):
        coca.parse_calcium_xml(tmp_path / "c.xml")


def test_nongated_ids():
    assert coca.nongated_folder_id("12A") == "12"
    assert coca.nongated_folder_id(" 12 ") == "12"
    assert coca.nongated_folder_id("nongated-7") == "7"
    assert coca.nongated_study_id("012B") == "nongated-12"
    with pytest.raises(coca.CocaError):
        coca.nongated_folder_id("A12")


@pytest.mark.parametrize("header", ["filename ", "filename"])
def test_scores_sheet(tmp_path, header):
    folder = tmp_path / coca.NONGATED_DIR
    folder.mkdir()
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append([header, "LCA", "LAD", "LCX", "RCA", "total"])
    sheet.append(["12A", 0, 10.5, 2, 0, 12.5])
    sheet.append(["3A", 1, 1, 1, 1, 7])  # total is not the vessel sum
    sheet.append(["5", None, 0, 0, 0, 0])
    book.save(folder / "scores.xlsx")
    scores = coca.load_nongated_scores(tmp_path)
    assert scores["12A"] == {
        "RCA": 0.0, "LAD": 10.5, "LCA": 0.0, "LCX": 2.0, "total": 12.5, "total_mismatch": False
    }  # fmt: skip
    assert scores["3A"]["total"] == 7 and scores["3A"]["total_mismatch"]
    assert scores["5"]["LCA"] == 0.0
    sheet.append(["12A", 0, 0, 0, 0, 0])
    book.save(folder / "scores.xlsx")
    with pytest.raises(coca.CocaError, match="rows 2 and 5: study 12 appears twice"):
        coca.load_nongated_scores(tmp_path)


def test_list_gated_patients(tmp_path):
    base = tmp_path / coca.GATED_DIR
    for pid in (0, 2, 10):
        (base / "patient" / str(pid) / "series").mkdir(parents=True)
    (base / "patient" / ".DS_Store").write_text("")
    (base / "calcium_xml").mkdir()
    for pid in (2, 10, 11):
        (base / "calcium_xml" / f"{pid}.xml").write_text("")
    got = coca.list_gated_patients(tmp_path)
    assert got.with_dicom == [0, 2, 10] and got.annotated == [2, 10]
    assert got.no_xml == [0] and got.xml_only == [11] and got.ignored == [".DS_Store"]
    with pytest.raises(coca.CocaError, match="gated folder not found"):
        coca.list_gated_patients(tmp_path / "nothing")


def _write_ct(folder: Path, hu: np.ndarray, z_mm: np.ndarray, spacing: float, uid: str | None):
    """Tiny CT series; InstanceNumber 1 and file 0001 are the most superior slice."""
    folder.mkdir(parents=True)
    order = np.argsort(-z_mm)
    for n, k in enumerate(order, start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"1.2.3.{n}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(
            str(folder / f"IM-0001-{n:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128
        )
        ds.SOPClassUID = CTImageStorage
        ds.Modality = "CT"
        ds.PatientName = "Doe^Hidden"
        ds.PatientID = "PHI-424242"
        if uid:
            ds.SeriesInstanceUID = uid
        ds.SeriesNumber = 2
        ds.InstanceNumber = n
        ds.ImagePositionPatient = [-40.0, -40.0, float(z_mm[k])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = 3.0
        ds.KVP = 120
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (hu[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        ds.save_as(folder / f"IM-0001-{n:04d}.dcm", enforce_file_format=True)


def test_hand_built_release_reversed_image_index(tmp_path):
    hu = _volume(nz=4, n=16, seed=3)
    z_mm = np.array([-30.0, -27.0, -24.0, -21.0])
    gated = tmp_path / coca.GATED_DIR
    _write_ct(gated / "patient" / "0" / "Pro_Gated_CS_3.0", hu, z_mm, 0.5, "1.2.9.1")
    _write_ct(gated / "patient" / "1" / "PRO_GATED", hu[::-1].copy(), z_mm, 0.5, "1.2.9.2")
    (gated / "calcium_xml").mkdir()
    # ImageIndex 1 is z = -27 (second from the bottom), i.e. file IM-0001-0003.
    _plist(
        gated / "calcium_xml" / "0.xml", {1: [_roi(NAMES[2], _box(3, 6, 3, 6), -27.0, hu[1], 0.5)]}
    )
    _write_ct(tmp_path / coca.NONGATED_DIR / "12" / "12", hu, z_mm - 100, 0.5, None)

    study = coca.load_gated_study(tmp_path, 0)
    assert study.study_id == "gated-0000" and study.kind == "gated"
    np.testing.assert_array_equal(study.hu, hu)
    np.testing.assert_array_equal(study.z_mm, z_mm)
    assert study.pixel_mm == (0.5, 0.5) and study.slice_thickness_mm == 3.0 and study.kvp == 120
    expected = np.zeros(hu.shape, np.uint8)
    expected[1, 3:7, 3:7] = 2
    expected[hu < 130] = 0
    np.testing.assert_array_equal(study.labels, expected)
    assert study.report.has_xml and study.report.self_check.n_exact == 1

    no_xml = coca.load_gated_study(tmp_path, 1)
    np.testing.assert_array_equal(no_xml.hu, hu[::-1])
    assert not no_xml.labels.any() and not no_xml.report.has_xml

    for sid in ("12A", "12", "nongated-12"):
        ng = coca.load_nongated_study(tmp_path, sid)
        assert ng.study_id == "nongated-12" and ng.labels is None
        np.testing.assert_array_equal(ng.z_mm, z_mm - 100)
    assert coca.list_nongated_studies(tmp_path) == ["12"]
    assert "Hidden" not in repr(study) and "424242" not in repr(study)
    with pytest.raises(coca.CocaError, match="no DICOM folder"):
        coca.load_gated_study(tmp_path, 7)


@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    truth = coca_release.make_release(root, n_gated=6, n_nongated=2, seed=3, size=64, slices=(6, 9))
    return root, truth


def test_phantom_labels_reproduce_truth(tiny_phantom):
    root, truth = tiny_phantom
    listing = coca.list_gated_patients(root)
    assert listing.with_dicom == list(range(6))
    assert listing.xml_only == [
        int(p) for p, t in truth["gated"].items() if t["has_xml"] and not t["has_dicom"]
    ]
    assert listing.no_xml == [
        int(p) for p, t in truth["gated"].items() if t["has_dicom"] and not t["has_xml"]
    ]
    instance_one = set()
    for pid in listing.with_dicom:
        t = truth["gated"][str(pid)]
        study = coca.load_gated_study(root, pid)
        instance_one.add(t["instance_one"])
        assert np.all(np.diff(study.z_mm) > 0) and study.hu.shape[0] == t["n_slices"]
        assert study.slice_thickness_mm == pytest.approx(t["slice_thickness_mm"])
        # Calcified slices land where the phantom put them, whichever way files run.
        calcified = np.flatnonzero(study.labels.reshape(len(study.labels), -1).any(axis=1))
        assert calcified.tolist() == t["calcified_slices"]
        sc = study.report.self_check
        assert sc.n_checked == t["n_rois"] and sc.n_exact == sc.n_checked
        skipped = [s.reason for s in study.report.skipped_rois]
        assert skipped.count("empty placeholder") == t["n_empty_rois"]
        assert sum(r.startswith("junk name") for r in skipped) == t["n_junk_rois"]
        score = agatston.agatston(study.hu, study.labels, study.pixel_mm, study.slice_thickness_mm)
        for v in (*coca.VESSELS, "total"):
            got = score.total if v == "total" else score.per_vessel[v]
            assert got == t[v], (pid, v)
    assert instance_one == {"superior", "inferior"}  # both file orders were exercised
    scores = coca.load_nongated_scores(root)
    for name, t in truth["nongated"].items():
        assert scores[name]["total"] == t["xlsx_total"]
        assert scores[name]["total_mismatch"] == t["total_mismatch"]
        study = coca.load_nongated_study(root, name)
        assert study.labels is None and study.hu.shape[0] == t["n_slices"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("Area", "0.12 cm2", "Area is not a number: '0.12 cm2'"),
        ("NumberOfPoints", "four", "NumberOfPoints is not a number"),
        ("Mean", [1.0], "Mean is a list, not a number"),
        ("ROIs", {"Name": "x"}, "ROIs is a dict, not a list"),
    ],
)
def test_malformed_xml_names_file_and_roi(tmp_path, field, value, message):
    hu = _volume()
    roi = _roi(NAMES[1], _box(3, 6, 3, 6), -27.0, hu[1], 0.5)
    images = {1: [roi]}
    if field == "ROIs":
        images = {1: value}
        data = {"Images": [{"ImageIndex": 1, "ROIs": value}]}
        with (tmp_path / "7.xml").open("wb") as f:
            plistlib.dump(data, f)
    else:
        roi[field] = value
        _plist(tmp_path / "7.xml", images)
    with pytest.raises(coca.CocaError, match=rf"7\.xml ImageIndex 1.*{message}"):
        coca.parse_calcium_xml(tmp_path / "7.xml")


def _one_patient_release(tmp_path, roi: dict, hu: np.ndarray, z_mm: np.ndarray) -> Path:
    gated = tmp_path / coca.GATED_DIR
    _write_ct(gated / "patient" / "0" / "S", hu, z_mm, 0.5, "1.2.9.1")
    (gated / "calcium_xml").mkdir()
    _plist(gated / "calcium_xml" / "0.xml", {1: [roi]})
    return tmp_path


def test_malformed_xml_leaves_labels_out_and_keeps_the_scan(tmp_path):
    hu, z_mm = _volume(seed=3), np.array([-30.0, -27.0, -24.0, -21.0])
    roi = _roi(NAMES[2], _box(3, 6, 3, 6), -27.0, hu[1], 0.5)
    roi["Area"] = "n/a"
    study = coca.load_gated_study(_one_patient_release(tmp_path, roi, hu, z_mm), 0)
    assert study.labels is None
    np.testing.assert_array_equal(study.hu, hu)
    assert study.report.labels_left_out.startswith("unusable calcium XML: 0.xml ImageIndex 1")
    assert "Area is not a number" in study.report.labels_left_out


def test_number_of_points_zero_with_points_uses_the_points(tmp_path):
    hu, z_mm = _volume(seed=3), np.array([-30.0, -27.0, -24.0, -21.0])
    roi = _roi(NAMES[2], _box(3, 6, 3, 6), -27.0, hu[1], 0.5)
    roi["NumberOfPoints"] = 0
    study = coca.load_gated_study(_one_patient_release(tmp_path, roi, hu, z_mm), 0)
    expected = np.zeros(hu.shape, np.uint8)
    expected[1, 3:7, 3:7] = 2
    expected[hu < 130] = 0
    np.testing.assert_array_equal(study.labels, expected)
    assert study.report.rois_used == 1 and not study.report.skipped_rois
    assert not study.report.unreliable


def test_zero_pixel_and_self_check_failures_are_reported_per_roi():
    hu = _volume()
    z_mm = np.arange(4) * 3.0
    empty = _roi(NAMES[1], _box(13, 14, 13, 14), 3.0, None, 0.5)  # HU < 130 there
    empty.update(Area=0.02, Mean=300.0, Max=400.0)
    off = _roi(NAMES[2], _box(3, 6, 3, 6), 3.0, hu[1], 0.5)
    off["Area"] += 0.03  # 12 pixels: beyond the 16-pixel box's bound (15.97 / 2 + 1 = 8.98)
    good = _roi(NAMES[4], _box(9, 11, 9, 12), 3.0, hu[1], 0.5)
    parsed = []
    for k, r in enumerate([empty, off, good]):
        pts = np.array([[float(v) for v in p.strip("()").split(",")] for p in r["Point_px"]])
        parsed.append(
            {"image_index": 1, "roi": k, "name": r["Name"], "points_px": pts,
             "center": (0.0, 0.0, 3.0), "area": r["Area"], "mean": r["Mean"], "min": r["Min"],
             "max": r["Max"], "num_points": len(pts)}
        )  # fmt: skip
    report = coca.RoiReport()
    labels = coca.rasterise_rois(parsed, hu, z_mm, (0.5, 0.5), 3.0, report)
    assert labels is not None and report.rois_used == 3
    got = [(u.image_index, u.roi, u.reason.split(" ")[0]) for u in report.unreliable]
    assert got == [(1, 0, "0"), (1, 1, "self-check")]
    assert "0 pixels" in report.unreliable[0].reason
    assert "area 0.03 cm^2 (bound 0.02246)" in report.unreliable[1].reason


def _scores_folder(tmp_path) -> Path:
    folder = tmp_path / coca.NONGATED_DIR
    folder.mkdir()
    return folder / "scores.xlsx"


@pytest.mark.parametrize("content", ["empty", "csv", "truncated"])
def test_unreadable_scores_sheet_names_the_file(tmp_path, content):
    path = _scores_folder(tmp_path)
    if content == "empty":
        path.write_bytes(b"")
    elif content == "csv":
        path.write_text("filename ,LCA,LAD,LCX,RCA,total\n12A,0,1,0,0,1\n")
    else:
        book = openpyxl.Workbook()
        book.active.append(["filename", "LCA", "LAD", "LCX", "RCA", "total"])
        book.save(path)
        path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(coca.CocaError, match=rf"{path}: not a readable \.xlsx workbook"):
        coca.load_nongated_scores(tmp_path)


def test_non_numeric_study_id_names_file_and_row(tmp_path):
    path = _scores_folder(tmp_path)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["filename ", "LCA", "LAD", "LCX", "RCA", "total"])
    sheet.append(["12A", 0, 1, 0, 0, 1])
    sheet.append(["patient twelve", 0, 1, 0, 0, 1])
    book.save(path)
    with pytest.raises(coca.CocaError, match=rf"{path} row 3: study id 'patient twelve'"):
        coca.load_nongated_scores(tmp_path)


# --- Labels and scores that look right but are not (issue 23) ------------------------------


def _parsed(roi: dict, k: int, index: int = 1, z: float = 3.0) -> dict:
    """`parse_calcium_xml`'s form of a hand-built ROI dict."""
    pts = np.array([[float(v) for v in p.strip("()").split(",")] for p in roi["Point_px"]])
    return {
        "image_index": index, "roi": k, "name": roi["Name"], "points_px": pts.reshape(-1, 2),
        "center": (0.0, 0.0, z), "area": roi["Area"], "mean": roi["Mean"], "min": roi["Min"],
        "max": roi["Max"], "num_points": len(pts),
    }  # fmt: skip


@pytest.mark.parametrize(
    "name, label",
    [("LAD", 2), ("lad", 2), ("Left Main", 3), ("LM", 3), ("left-main coronary artery", 3),
     ("LCX", 4), ("Circumflex", 4), ("RCA", 1), ("Right  Coronary", 1), ("L.A.D.", 2)],
)  # fmt: skip
def test_artery_synonyms_label_like_the_full_name(name, label):
    hu = _volume()
    roi = _roi(name, _box(3, 6, 3, 6), 3.0, hu[1], 0.5)
    report = coca.RoiReport()
    labels = coca.rasterise_rois([_parsed(roi, 0)], hu, np.arange(4) * 3.0, (0.5, 0.5), 3.0, report)
    expected = np.zeros(hu.shape, np.uint8)
    expected[1, 3:7, 3:7] = label
    expected[hu < 130] = 0
    np.testing.assert_array_equal(labels, expected)
    assert not report.unreliable and report.self_check.n_exact == 1


def test_unknown_names_and_lost_outlines_mark_the_roi_unreliable():
    hu = _volume()
    good = _roi(NAMES[1], _box(9, 11, 9, 12), 3.0, hu[1], 0.5)
    pda = _roi("Posterior Descending Artery", _box(3, 6, 3, 6), 3.0, hu[1], 0.5)
    nameless = _roi("", _box(3, 6, 3, 6), 3.0, hu[1], 0.5)
    lost = _roi(NAMES[2], [], 3.0, None, 0.5)
    lost.update(Area=0.04, Mean=300.0, Max=500.0)  # measured, but no outline left
    two = _roi(NAMES[4], _box(3, 6, 3, 6)[:2], 3.0, None, 0.5)
    two.update(Area=0.01)
    placeholder = _roi(NAMES[3], [], 3.0, None, 0.5)  # Area 0: nothing annotated
    junk = _roi("Unnamed", _box(3, 6, 3, 6), 3.0, hu[1], 0.5)
    rois = [good, pda, nameless, lost, two, placeholder, junk]
    report = coca.RoiReport()
    labels = coca.rasterise_rois(
        [_parsed(r, k) for k, r in enumerate(rois)], hu, np.arange(4) * 3.0, (0.5, 0.5), 3.0, report
    )
    assert [(u.roi, u.name) for u in report.unreliable] == [
        (1, "Posterior Descending Artery"), (2, ""), (3, NAMES[2]), (4, NAMES[4])
    ]  # fmt: skip
    reasons = [u.reason for u in report.unreliable]
    assert reasons[0] == "artery unknown ('Posterior Descending Artery'): lesion not labelled"
    assert reasons[1] == "artery unknown (no name): lesion not labelled"
    assert reasons[2] == "0 outline point(s) but XML Area 0.04 cm^2: lesion lost"
    assert reasons[3] == "2 outline point(s) but XML Area 0.01 cm^2: lesion lost"
    assert [s.reason for s in report.skipped_rois] == ["empty placeholder", "junk name 'Unnamed'"]
    assert report.rois_used == 1 and set(np.unique(labels)) == {0, 1}


def test_self_check_bound_is_half_the_perimeter_plus_one_pixel():
    # A 4 x 4 pixel box outlined 0.496 px outside the centres: perimeter 4 x 3.992 px.
    hu = _volume()
    roi = _roi(NAMES[2], _box(3, 6, 3, 6), 3.0, hu[1], 0.5)
    pts = _parsed(roi, 0)["points_px"]
    assert coca.calcium_xml.outline_perimeter_px(pts) == pytest.approx(15.968)
    area_bound, mean_bound = coca.calcium_xml.self_check_bounds(pts, 530.0, 15, 0.0025)
    assert area_bound == pytest.approx((15.968 / 2 + 1) * 0.0025)
    assert mean_bound == pytest.approx(2 * 8.984 * 400 / 15)
    n = int(np.count_nonzero(hu[1, 3:7, 3:7] >= 130))
    for extra_px, verdict in [(1.3, "tolerated"), (8.9, "tolerated"), (9.1, "failed")]:
        r = dict(roi, Area=roi["Area"] + extra_px * 0.0025)
        report = coca.RoiReport()
        coca.rasterise_rois([_parsed(r, 0)], hu, np.arange(4) * 3.0, (0.5, 0.5), 3.0, report)
        sc = report.self_check
        got = "tolerated" if sc.n_tolerated else "failed"
        assert (got, sc.n_exact) == (verdict, 0), extra_px
        assert bool(report.unreliable) == (verdict == "failed")  # the only ROI: the patient's
    assert n == 15  # the hole at (4, 4) is below 130 HU


def test_a_lone_failing_roi_is_flagged_when_the_rest_agrees():
    hu = _volume()
    z = np.arange(4) * 3.0
    good = [_roi(NAMES[4], _box(9, 11, 9, 12), 3.0, hu[1], 0.5)]
    good.append(_roi(NAMES[1], _box(3, 6, 3, 6), 9.0, hu[3], 0.5))
    bad = _roi(NAMES[2], _box(3, 6, 3, 6), 3.0, hu[1], 0.5)
    bad["Area"] += 0.05  # 20 pixels
    parsed = [_parsed(good[0], 0), _parsed(good[1], 0, index=3, z=9.0), _parsed(bad, 1)]
    report = coca.RoiReport()
    labels = coca.rasterise_rois(parsed, hu, z, (0.5, 0.5), 3.0, report)
    assert labels is not None and not report.unreliable
    assert [(f.image_index, f.roi, f.name) for f in report.flagged] == [(1, 1, NAMES[2])]
    assert report.flagged[0].reason.startswith("self-check failed: |diff| area 0.05 cm^2")
    # Two failures: not the ROI's problem but the patient's.
    bad2 = dict(good[1], Area=good[1]["Area"] + 0.05)
    parsed[1] = _parsed(bad2, 0, index=3, z=9.0)
    report = coca.RoiReport()
    coca.rasterise_rois(parsed, hu, z, (0.5, 0.5), 3.0, report)
    assert not report.flagged and [(u.image_index, u.roi) for u in report.unreliable] == [
        (3, 0), (1, 1)
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["0.XML", "00.xml", "000.Xml"])
def test_xml_found_case_insensitively_and_by_integer_id(tmp_path, name):
    hu, z_mm = _volume(seed=3), np.array([-30.0, -27.0, -24.0, -21.0])
    root = _one_patient_release(
        tmp_path, _roi(NAMES[2], _box(3, 6, 3, 6), -27.0, hu[1], 0.5), hu, z_mm
    )
    xml_dir = root / coca.GATED_DIR / "calcium_xml"
    (xml_dir / "0.xml").rename(xml_dir / name)
    study = coca.load_gated_study(root, 0)
    assert study.report.has_xml and int(study.labels.max()) == 2
    assert coca.list_gated_patients(root).annotated == [0]


def test_two_xmls_or_folders_for_one_patient_is_an_error_naming_both(tmp_path):
    hu, z_mm = _volume(seed=3), np.array([-30.0, -27.0, -24.0, -21.0])
    root = _one_patient_release(
        tmp_path, _roi(NAMES[2], _box(3, 6, 3, 6), -27.0, hu[1], 0.5), hu, z_mm
    )
    xml_dir = root / coca.GATED_DIR / "calcium_xml"
    (xml_dir / "00.XML").write_bytes((xml_dir / "0.xml").read_bytes())
    with pytest.raises(coca.CocaError, match=r"patient 0: 2 calcium XML files \(0.xml, 00.XML in"):
        coca.load_gated_study(root, 0)
    (xml_dir / "00.XML").unlink()
    patients = root / coca.GATED_DIR / "patient"
    (patients / "000").mkdir()
    with pytest.raises(coca.CocaError, match=r"patient 0: 2 DICOM folders \(0, 000 in"):
        coca.load_gated_study(root, 0)
    (patients / "000").rmdir()
    (patients / "0").rename(patients / "0007")
    (xml_dir / "0.xml").rename(xml_dir / "7.xml")
    assert int(coca.load_gated_study(root, 7).labels.max()) == 2  # folder 0007 is patient 7


def test_the_series_the_xml_annotates_is_kept_over_a_longer_one(tmp_path):
    hu, z_mm = _volume(seed=3), np.array([-30.0, -27.0, -24.0, -21.0])
    roi = _roi(NAMES[2], _box(3, 6, 3, 6), -27.0, hu[1], 0.5)
    roi["Center"] = "(-37.5, -37.5, -27.000)"  # inside the 16 x 0.5 mm field at (-40, -40)
    root = _one_patient_release(tmp_path, roi, hu, z_mm)
    other = _volume(nz=7, seed=9)  # another study's longer series, 200 mm higher
    _write_ct(
        root / coca.GATED_DIR / "patient" / "0" / "T",
        other,
        np.arange(7) * 3.0 + 200,
        0.5,
        "1.2.9.77",
    )
    study = coca.load_gated_study(root, 0)
    np.testing.assert_array_equal(study.hu, hu)
    assert int(study.labels.max()) == 2 and not study.report.labels_left_out
    assert study.report.series_note.startswith(
        "kept the 4-file series that matches the annotations"
    )
    assert {r for _, r in study.report.dropped_files} == {
        "other series (7 slices; does not match the annotations)"
    }


@pytest.mark.parametrize(
    "rows, message",
    [
        ([["12A", 0, 1, 0, 0, 1], ["12", 0, 2, 0, 0, 2]], "rows 2 and 3: study 12 appears twice"),
        ([["12A", 0, -5, 0, 0, 1]], "row 2 LAD: negative score -5"),
        ([["3A", 0, 1, 0, 0, "=SUM(B2:E2)"]], "row 2 total: formula '=SUM(B2:E2)' has no cached"),
    ],
)
def test_scores_sheet_values_that_cannot_be_right_are_refused_naming_the_row(
    tmp_path, rows, message
):
    path = _scores_folder(tmp_path)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["filename ", "LCA", "LAD", "LCX", "RCA", "total"])
    for row in rows:
        sheet.append(row)
    book.save(path)  # openpyxl stores no cached value for a formula
    with pytest.raises(coca.CocaError, match=re.escape(f"scores.xlsx {message}")):
        coca.load_nongated_scores(tmp_path)
