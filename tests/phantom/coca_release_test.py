"""Tests of the synthetic COCA release, checked from the written files with pydicom,
plistlib and openpyxl and an independent Agatston implementation (not the reader)."""

from __future__ import annotations

import json
import math
import plistlib
import re
from pathlib import Path

import numpy as np
import openpyxl
import pydicom
import pytest
from scipy import ndimage
from skimage.draw import polygon

from dinolg_jax.phantom import anatomy, calcium, coca_release

SIZE = 96
N_GATED = 4
NAMES = {
    "Right Coronary Artery": 1,
    "Left Anterior Descending Artery": 2,
    "Left Coronary Artery": 3,
    "Left Circumflex Artery": 4,
}
ROI_KEYS = {
    "Name",
    "Point_px",
    "Point_mm",
    "Center",
    "Area",
    "Mean",
    "Min",
    "Max",
    "Total",
    "Dev",
    "Length",
    "NumberOfPoints",
    "IndexInImage",
    "Type",
}
PX = re.compile(r"^\((-?\d+\.\d{6}), (-?\d+\.\d{6})\)$")
MM = re.compile(r"^\((-?\d+\.\d{6}), (-?\d+\.\d{6}), (-?\d+\.\d{6})\)$")


@pytest.fixture(autouse=True)
def _quiet_uids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The phantom's UIDs are non-standard on purpose (like COCA's): read them quietly."""
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("phantom") / "rel"
    truth = coca_release.make_release(
        out, n_gated=N_GATED, n_nongated=2, seed=0, size=SIZE, slices=(10, 14)
    )
    return out, truth


def _read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


def _series(folder: Path) -> dict[str | None, list[pydicom.Dataset]]:
    """Every file under `folder`, grouped by SeriesInstanceUID."""
    groups: dict[str | None, list[pydicom.Dataset]] = {}
    for f in sorted(folder.rglob("*.dcm")):
        ds = _read(f)
        groups.setdefault(ds.get("SeriesInstanceUID"), []).append(ds)
    return groups


def _main_volume(folder: Path) -> tuple[np.ndarray, np.ndarray, float, float, list]:
    """Longest series, z ascending: (hu [Z, H, W], z [Z], spacing, thickness, datasets)."""
    groups = _series(folder)
    longest = max((g for k, g in groups.items() if k is not None), key=len)
    longest = sorted(longest, key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array.astype(np.int32) * int(d.RescaleSlope) for d in longest])
    hu = (hu + int(longest[0].RescaleIntercept)).astype(np.int16)
    z = np.array([float(d.ImagePositionPatient[2]) for d in longest])
    return hu, z, float(longest[0].PixelSpacing[0]), float(longest[0].SliceThickness), longest


def _agatston(hu: np.ndarray, labels: np.ndarray, sp: float, thick: float) -> dict[str, float]:
    """Independent Agatston: 4-connected 2D lesions per vessel, >= 1 mm^2, weight by max."""
    out = dict.fromkeys(("RCA", "LAD", "LCA", "LCX"), 0.0)
    for v, name in enumerate(out, start=1):
        for k in range(len(hu)):
            comp, n = ndimage.label((labels[k] == v) & (hu[k] >= 130))
            for i in range(1, n + 1):
                m = comp == i
                area = m.sum() * sp * sp
                if area < 1.0 - 1e-9:
                    continue
                mx = hu[k][m].max()
                w = 1 if mx < 200 else 2 if mx < 300 else 3 if mx < 400 else 4
                out[name] += area * w * thick / 3.0
    out["total"] = sum(out.values())
    return out


def _xml_labels(xml: dict, hu: np.ndarray, z: np.ndarray, sp: float) -> np.ndarray:
    """Rasterises the XML like the reader must, checking each ROI's own statistics."""
    labels = np.zeros(hu.shape, np.uint8)
    for image in xml["Images"]:
        k = image["ImageIndex"]
        assert image["NumberOfROIs"] == len(image["ROIs"])
        for i, roi in enumerate(image["ROIs"]):
            assert set(roi) == ROI_KEYS, set(roi) ^ ROI_KEYS
            assert roi["IndexInImage"] == i and roi["Type"] == 20
            cz = float(MM.match(roi["Center"]).group(3))
            assert abs(cz - z[k]) < 1e-6  # Center z is the z of slice ImageIndex
            if roi["NumberOfPoints"] == 0:
                assert roi["Point_px"] == [] and roi["Area"] == roi["Max"] == 0
                continue
            pts = np.array([[float(g) for g in PX.match(p).groups()] for p in roi["Point_px"]])
            assert len(pts) == roi["NumberOfPoints"] == len(roi["Point_mm"])
            assert np.any(pts[0] != pts[-1])  # open outline
            off = np.abs(pts - np.round(pts))
            assert off.max() < 0.01 and off.min() > 0  # ~0.004 px off pixel centres
            rr, cc = polygon(pts[:, 1], pts[:, 0], hu.shape[1:])
            keep = hu[k][rr, cc] >= 130
            rr, cc = rr[keep], cc[keep]
            vals = hu[k][rr, cc].astype(np.float64)
            assert roi["Area"] == pytest.approx(len(vals) * sp * sp / 100, rel=1e-12, abs=0)
            assert (roi["Mean"], roi["Max"], roi["Min"]) == pytest.approx(
                (vals.mean(), vals.max(), vals.min()), abs=1e-9
            )
            assert roi["Total"] == pytest.approx(vals.sum(), abs=1e-6)
            xmm = [float(MM.match(p).group(1)) for p in roi["Point_mm"]]
            assert np.mean(xmm) == pytest.approx(float(MM.match(roi["Center"]).group(1)), abs=2e-6)
            if roi["Name"] in NAMES:
                assert not np.any(labels[k][rr, cc] & (labels[k][rr, cc] != NAMES[roi["Name"]]))
                labels[k][rr, cc] = NAMES[roi["Name"]]
    return labels


def test_layout_and_scores_sheet(release):
    out, truth = release
    gated = out / "Gated_release_final"
    assert sorted(p.name for p in (gated / "patient").iterdir()) == ["0", "1", "2", "3"]
    xmls = sorted(p.name for p in (gated / "calcium_xml").iterdir())
    expect = [f"{pid}.xml" for pid, t in truth["gated"].items() if t["has_xml"]]
    assert xmls == sorted(expect)
    assert "4.xml" in xmls and not truth["gated"]["4"]["has_dicom"]  # XML, no DICOM
    assert not truth["gated"]["2"]["has_xml"] and truth["gated"]["2"]["total"] == 0
    for pid in range(N_GATED):
        for f in (gated / "patient" / str(pid)).rglob("*.dcm"):
            assert re.fullmatch(r"IM-\d{4}-\d{4}\.dcm", f.name)
    for n in (0, 1):
        files = sorted((out / "deidentified_nongated" / str(n) / str(n)).iterdir())
        assert [f.name for f in files] == [f"IM-0001-{i:04d}.dcm" for i in range(1, len(files) + 1)]
    book = openpyxl.load_workbook(out / "deidentified_nongated" / "scores.xlsx")
    assert len(book.worksheets) == 1
    rows = list(book.worksheets[0].iter_rows(values_only=True))
    assert rows[0] == ("filename ", "LCA", "LAD", "LCX", "RCA", "total")
    sheet = {r[0]: r[1:] for r in rows[1:]}
    assert sorted(sheet) == ["0A", "1A"] == sorted(truth["nongated"])
    for sid, (lca, lad, lcx, rca, total) in sheet.items():
        t = truth["nongated"][sid]
        assert (lca, lad, lcx, rca) == (t["LCA"], t["LAD"], t["LCX"], t["RCA"])
        assert total == t["xlsx_total"]
        assert (abs(lca + lad + lcx + rca - total) > 0.01) == t["total_mismatch"]
    assert truth["nongated"]["0A"]["total_mismatch"]
    assert json.loads((out / "truth.json").read_text()) == truth


def test_gated_dicom_headers_and_order(release):
    out, truth = release
    scale = 512 / SIZE
    for pid in range(N_GATED):
        t = truth["gated"][str(pid)]
        folder = out / "Gated_release_final" / "patient" / str(pid)
        hu, z, sp, thick, dss = _main_volume(folder)
        assert hu.shape == (t["n_slices"], SIZE, SIZE)
        assert np.allclose(np.diff(z), thick) and thick == t["slice_thickness_mm"] == 3.0
        assert 0.32 * scale <= sp <= 0.47 * scale and sp == t["pixel_mm"]
        for d in dss:
            assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert d.Modality == "CT" and d.PixelRepresentation == 0 and d.BitsAllocated == 16
            assert (float(d.RescaleSlope), float(d.RescaleIntercept)) == (1.0, -1024.0)
            assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert len(d[0x00189352].value) == 3 and int(d.KVP) in (80, 100, 120)
            assert d.StudyInstanceUID and d.PatientName in truth["phi_markers"]
            for key in ("PatientID", "PatientBirthDate", "StudyDate", "InstitutionName"):
                assert str(d.get(key)) in truth["phi_markers"]
        first = min(dss, key=lambda d: int(d.InstanceNumber))
        top = float(first.ImagePositionPatient[2]) == z.max()
        assert top == (t["instance_one"] == "superior")
        assert top == (pid % 6 not in (2, 5))  # default patients: InstanceNumber 1 on top
    assert len(set(truth["phi_markers"])) == len(truth["phi_markers"]) > 5


def test_traps(release):
    out, _ = release
    base = out / "Gated_release_final" / "patient"
    g1 = _series(base / "1")
    sizes = sorted(len(g) for g in g1.values())
    assert None not in g1 and sizes[0] == 1 and sizes[1] == sizes[2]  # scout + duplicate
    copies = [sorted(float(d.ImagePositionPatient[2]) for d in g) for g in g1.values()]
    assert sum(c == copies[0] or c == copies[1] for c in copies) >= 2
    g2 = _series(base / "2")
    assert len(g2[None]) == 1 and len(g2) == 2  # one file without SeriesInstanceUID
    for n in (0, 1):
        for d in _series(out / "deidentified_nongated" / str(n)).get(None, []):
            assert "StudyInstanceUID" not in d and float(d.SliceThickness) == 5.0
            assert 0.6 * 512 / SIZE <= float(d.PixelSpacing[0]) <= 0.9 * 512 / SIZE
        assert list(_series(out / "deidentified_nongated" / str(n))) == [None]


def test_xml_statistics_and_truth_scores(release):
    out, truth = release
    n_empty = n_junk = 0
    for pid in range(N_GATED):
        t = truth["gated"][str(pid)]
        hu, z, sp, thick, _ = _main_volume(out / "Gated_release_final" / "patient" / str(pid))
        labels = np.zeros(hu.shape, np.uint8)
        if t["has_xml"]:
            with open(out / "Gated_release_final" / "calcium_xml" / f"{pid}.xml", "rb") as f:
                xml = plistlib.load(f)
            assert list(xml) == ["Images"]
            labels = _xml_labels(xml, hu, z, sp)
            rois = [r for im in xml["Images"] for r in im["ROIs"]]
            n_empty += sum(r["NumberOfPoints"] == 0 for r in rois)
            junk = [r for r in rois if r["Name"] not in NAMES]
            n_junk += len(junk)
            assert all(r["Name"] in ("Unnamed", "1") and r["Max"] >= 130 for r in junk)
        ref = _agatston(hu, labels, sp, thick)
        for key, value in ref.items():
            assert t[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (pid, key)
        calcified = np.flatnonzero(labels.reshape(len(labels), -1).max(1)).tolist()
        assert calcified == t["calcified_slices"]
    assert n_empty >= 1 and n_junk == 1  # pid 3 holds the junk-named ROI


def test_bone_above_threshold_is_never_labelled(release):
    out, truth = release
    for pid in range(N_GATED):
        hu, *_ = _main_volume(out / "Gated_release_final" / "patient" / str(pid))
        bright = int((hu >= 130).sum())
        labelled = truth["gated"][str(pid)]["n_calcium_pixels"]
        assert bright - labelled > 200 * len(hu)  # spine, sternum, ribs on every slice
        assert int((hu >= 600).sum()) > 0 and hu.min() >= -1024


def test_category_mix_and_calcified_fraction():
    """Plans 40 full-size patients (no rendering): categories and calcium coverage."""
    fractions, cats, areas_px = [], set(), []
    for pid in range(40):
        rng = np.random.default_rng([0, pid])
        cat = calcium.CATEGORY_PATTERN[pid % 20]
        scan = anatomy.sample_scan(rng, "gated", 512, 47, 3.0)
        plaques, target = calcium.plan_plaques(rng, scan, cat)
        cats.add(cat)
        fractions.append(len({q.slice for q in plaques}) / 47)
        areas_px += [math.pi * q.axes_px[0] * q.axes_px[1] for q in plaques]
        if cat == "zero":
            assert target == 0 and not plaques
        else:
            assert plaques and all(1 <= q.outline_px.min() for q in plaques)
    assert cats == {"zero", "low", "moderate", "high", "very_high"}
    assert 0.08 <= float(np.mean(fractions)) <= 0.2
    assert min(areas_px) < 10 and max(areas_px) > 250  # a few to a few hundred pixels


@pytest.mark.slow
def test_deterministic_and_independent_of_workers(release, tmp_path):
    out, truth = release
    again = coca_release.make_release(
        tmp_path / "b",
        n_gated=N_GATED,
        n_nongated=2,
        seed=0,
        size=SIZE,
        slices=(10, 14),
        workers=2,
    )
    assert again == truth
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = coca_release.make_release(
        tmp_path / "c", n_gated=1, n_nongated=1, seed=1, size=SIZE, slices=(10, 14)
    )
    assert other["gated"]["0"]["total"] != truth["gated"]["0"]["total"]
    rel = next(p for p in files if p.parts[:3] == ("Gated_release_final", "patient", "0"))
    alt = sorted((tmp_path / "c" / rel.parent.parent).rglob("*.dcm"))[0]
    assert alt.read_bytes() != (out / rel).read_bytes()
    assert set(other["phi_markers"]) & set(truth["phi_markers"]) == {coca_release.INSTITUTION}


def test_nongated_air_lung_and_body(release):
    out, _ = release
    for n in (0, 1):
        d = sorted((out / "deidentified_nongated" / str(n) / str(n)).iterdir())
        hu = np.stack([_read(f).pixel_array.astype(np.int32) - 1024 for f in d])
        corner = hu[:, :4, :4]  # whole-chest field of view: air in the corners
        assert abs(float(corner.mean()) + 1000) < 10 and 5 < corner.std() < 25
        lung = float(((hu > -920) & (hu < -760)).mean())
        soft = float(((hu > -150) & (hu < 100)).mean())
        assert lung > 0.1 and soft > 0.2, (lung, soft)


def test_rewrite_replaces_only_a_phantom(tmp_path):
    kw = dict(n_gated=1, n_nongated=0, size=16, slices=(1, 1))
    coca_release.make_release(tmp_path, **kw)
    stray = tmp_path / "Gated_release_final" / "patient" / "9"
    stray.mkdir()
    coca_release.make_release(tmp_path, **kw)
    assert not stray.exists()  # a re-run leaves no stale patients behind
    rows = list(
        openpyxl.load_workbook(tmp_path / "deidentified_nongated" / "scores.xlsx")
        .worksheets[0]
        .iter_rows(values_only=True)
    )
    assert rows == [("filename ", "LCA", "LAD", "LCX", "RCA", "total")]
    (tmp_path / "truth.json").unlink()
    with pytest.raises(FileExistsError, match="real release"):
        coca_release.make_release(tmp_path, **kw)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        coca_release.make_release(tmp_path, size=8)
    with pytest.raises(ValueError, match="slices"):
        coca_release.make_release(tmp_path, slices=(5, 3))
    with pytest.raises(ValueError, match="n_gated"):
        coca_release.make_release(tmp_path, n_gated=0)


def test_roi_rule_matches_definition():
    """`roi_pixels` is the polygon of the float outline intersected with HU >= 130."""
    hu = np.full((12, 12), 100, np.int16)
    hu[4:8, 4:8] = 130
    hu[5, 5] = 129
    outline = np.array([[3.5, 3.5], [8.5, 3.5], [8.5, 8.5], [3.5, 8.5]])  # pixels 4..8
    rr, cc = calcium.roi_pixels(hu, outline)
    got = set(zip(rr.tolist(), cc.tolist(), strict=True))
    rows, cols = polygon(outline[:, 1], outline[:, 0], hu.shape)
    want = {(r, c) for r, c in zip(rows, cols, strict=True) if hu[r, c] >= 130}
    assert got == want and (5, 5) not in got and len(got) == 15
    assert math.isclose(sum(hu[r, c] for r, c in got), 15 * 130)


def test_targeted_field_keeps_the_anatomy_and_centres_the_heart():
    """A targeted reconstruction draws the same anatomy; only the field and centre move."""
    full = anatomy.sample_scan(np.random.default_rng(7), "gated", 112, 20, 3.0)
    zoom = anatomy.sample_scan(
        np.random.default_rng(7), "gated", 112, 20, 3.0, cardiac_fov_mm=(110.0, 130.0)
    )
    assert zoom.p == full.p and zoom.noise_hu == full.noise_hu
    fov_full, fov_zoom = full.pixel_mm * 112, zoom.pixel_mm * 112
    # the full field's draw in [165, 240] maps linearly onto [110, 130]
    assert fov_zoom == pytest.approx(110.0 + (fov_full - 165.0) / 75.0 * 20.0, abs=0.6)
    centre = (zoom.x0_mm + 55.5 * zoom.pixel_mm, zoom.y0_mm + 55.5 * zoom.pixel_mm)
    assert abs(centre[0] - full.p["hx"]) <= 4.0 and abs(centre[1] - full.p["hy"]) <= 4.0
    with pytest.raises(ValueError, match="cardiac_fov_mm"):
        anatomy.sample_scan(np.random.default_rng(7), "gated", 112, 20, 3.0, cardiac_fov_mm=(0, 1))


def test_targeted_release_records_its_field(tmp_path):
    truth = coca_release.make_release(
        tmp_path, n_gated=1, n_nongated=0, size=48, slices=(6, 6), cardiac_fov_mm=(110, 130)
    )
    assert truth["cardiac_fov_mm"] == [110.0, 130.0]
    assert 110 / 48 - 0.02 <= truth["gated"]["0"]["pixel_mm"] <= 130 / 48 + 0.02
    default = coca_release.make_release(tmp_path / "d", n_gated=1, n_nongated=0, size=48,
                                        slices=(6, 6))  # fmt: skip
    assert "cardiac_fov_mm" not in default
