"""COCA -> ArrayRecord conversion (data/convert.py) on a tiny phantom release."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import numpy as np
import pytest

from dinolg_jax.data import coca, convert, convert_report, manifest, records
from dinolg_jax.phantom import coca_release

REPO = Path(__file__).resolve().parents[2]
N_GATED = 12
MISMATCH_PID = 10  # one ROI's Center z is moved to another slice: labels left out


def _shift_one_center(xml: Path) -> None:
    with xml.open("rb") as f:
        data = plistlib.load(f)
    for image in data["Images"]:
        for roi in image["ROIs"]:
            if roi["NumberOfPoints"]:
                x, y, z = (float(v) for v in roi["Center"].strip("()").split(","))
                roi["Center"] = f"({x}, {y}, {z + 9.0})"
                with xml.open("wb") as f:
                    plistlib.dump(data, f)
                return
    raise AssertionError("no ROI to shift")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("convert")
    release = base / "release"
    truth = coca_release.make_release(
        release, n_gated=N_GATED, n_nongated=2, seed=1, size=64, slices=(5, 8)
    )
    _shift_one_center(release / coca.GATED_DIR / "calcium_xml" / f"{MISMATCH_PID}.xml")
    out = base / "out"
    report = convert.convert_release(
        release, out, seed=0, workers=1, shards_per_split=2, progress=False
    )
    return release, truth, out, report


def _read_split(out: Path, split: str) -> list[dict]:
    m = manifest.load(out)
    if m.num_records(split) == 0:
        return []
    source = grain.sources.ArrayRecordDataSource(m.shard_paths(split))
    return [records.decode(source[i]) for i in range(len(source))]


def _files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "report.json"
    }


def test_records_equal_study_slices_and_truth(converted):
    release, truth, out, _ = converted
    m = manifest.load(out)
    assert m.seed == 0 and m.data["record_version"] == records.VERSION
    for split in manifest.SPLITS:
        recs = _read_split(out, split)
        assert len(recs) == m.num_records(split)
        assert sum(r["has_calcium"] for r in recs) == m.splits[split]["num_positive"]
        assert len(m.studies_in(split)) == m.splits[split]["num_studies"]
        for sid in m.studies_in(split):
            kind, ident = sid.split("-")
            if kind == "gated":
                study = coca.load_gated_study(release, int(ident))
            else:
                study = coca.load_nongated_study(release, ident)
            rng = m.study_range(sid, split)
            assert len(rng) == study.hu.shape[0]
            for z, i in enumerate(rng):
                r = recs[i]
                assert (r["study"], r["slice"], r["num_slices"]) == (sid, z, len(rng))
                np.testing.assert_array_equal(r["image"], study.hu[z])
                want = np.zeros_like(r["labels"]) if study.labels is None else study.labels[z]
                np.testing.assert_array_equal(r["labels"], want)
                assert r["z_mm"] == study.z_mm[z] and r["kind"] == kind
                np.testing.assert_array_equal(r["pixel_mm"], np.float32(study.pixel_mm))
                assert len(r["lesion_centers"]) == len(r["lesion_vessels"])
                assert r["has_calcium"] == bool(want.any())
    # Scores in the manifest are those of the phantom's own label volumes, exactly.
    for pid in range(N_GATED):
        entry = m.studies[coca.gated_study_id(pid)]
        t = truth["gated"][str(pid)]
        if pid == MISMATCH_PID:
            assert entry["agatston"] is None and entry["split"] == "pretrain"
            continue
        assert entry["agatston"] == {v: t[v] for v in (*coca.VESSELS, "total")}
        assert entry["category"] == t["category_paper4"]
        assert entry["calcified_slices"] == len(t["calcified_slices"])
    assert m.studies["nongated-0"]["agatston"]["total"] == truth["nongated"]["0A"]["xlsx_total"]


def test_report_lists_every_skip(converted):
    _, truth, out, report = converted
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["counts"] == report["counts"]
    gated = [t for t in truth["gated"].values() if t["has_dicom"]]
    c = report["counts"]
    xml_only = [int(p) for p, t in truth["gated"].items() if t["has_xml"] and not t["has_dicom"]]
    assert xml_only == [N_GATED] and c["gated_xml_only_skipped"] == 1
    assert report["skipped_patients"] == [
        {"study": coca.gated_study_id(N_GATED), "reason": "calcium XML but no DICOM folder"}
    ]
    assert c["rois_skipped"]["empty placeholder"] == sum(t["n_empty_rois"] for t in gated)
    assert c["rois_skipped"].get("junk name", 0) == sum(t["n_junk_rois"] for t in gated) > 0
    assert [e["study"] for e in report["labels_left_out"]] == [coca.gated_study_id(MISMATCH_PID)]
    assert c["gated_no_xml_zero_labels"] == sum(not t["has_xml"] for t in gated)
    sc = report["self_check"]
    assert sc["n_exact"] == sc["n_checked"] > 0 and not sc["mismatches"]
    traps = [t for t in gated if {"duplicate_series", "scout"} & set(t["traps"])]
    assert traps and c["files_dropped"] == len(report["skipped_files"]) > 0
    assert all(not f["path"].startswith("/") for f in report["skipped_files"])
    assert report["scores"]["total_mismatch"] == ["0A"]
    assert report["timings"]["slices_per_s"] > 0


def test_split_stratification(converted):
    out = converted[2]
    m = manifest.load(out)
    held_out = {s for s in m.studies if m.studies[s]["split"] in ("val", "test")}
    assert not held_out & set(m.studies_in("pretrain"))
    assert set(m.studies_in("pretrain")) == set(m.studies) - held_out
    by_cat: dict[str, list[str]] = {}
    for e in m.studies.values():
        if e["kind"] == "gated" and e["agatston"] is not None:
            by_cat.setdefault(e["category"], []).append(e["split"])
    for splits in by_cat.values():
        if len(splits) >= 3:
            assert splits.count("val") >= 1 and splits.count("test") >= 1
            assert splits.count("train") >= 1
        else:
            assert set(splits) == {"train"}
    # Table 2 sized cohort (56/147/122/118 per category): ~80/10/10, per category.
    cats = [("low", 56), ("moderate", 147), ("high", 122), ("very high", 118)]
    cohort = {f"g{c}{i}": c for c, n in cats for i in range(n)}
    split = convert.assign_splits(cohort, seed=0)
    counts = {k: sum(v == k for v in split.values()) for k in ("train", "val", "test")}
    assert counts == {"train": 353, "val": 45, "test": 45}  # paper: 354/44/45
    for c, n in cats:
        assert sum(split[f"g{c}{i}"] == "val" for i in range(n)) == round(n / 10)
    assert convert.assign_splits(cohort, seed=0) == split
    assert convert.assign_splits(cohort, seed=1) != split


def test_lesion_centers_four_connected():
    lab = np.zeros((8, 10), np.uint8)
    lab[1:3, 1:3] = 2  # 2x2 square
    lab[5, 5] = 2
    lab[6, 6] = 2  # diagonal neighbour: separate under 4-connectivity
    lab[5, 6] = 1  # touches both, other vessel
    lab[0, 7:10] = 4
    centers, vessels = convert.lesion_centers(lab)
    np.testing.assert_allclose(centers, [[5, 6], [1.5, 1.5], [5, 5], [6, 6], [0, 8]])
    np.testing.assert_array_equal(vessels, [1, 2, 2, 2, 4])
    empty_c, empty_v = convert.lesion_centers(np.zeros((4, 4), np.uint8))
    assert empty_c.shape == (0, 2) and empty_v.shape == (0,)


@pytest.mark.slow
def test_rerun_workers_seed_and_no_phi(converted, tmp_path):
    release, truth, out, _ = converted
    first = _files(out)
    # Re-run into the same folder with 2 workers and a kept cache, then again from cache.
    convert.convert_release(
        release, out, seed=0, workers=2, shards_per_split=2, keep_cache=True, progress=False
    )
    cached = _files(out)
    assert {k: v for k, v in cached.items() if not k.startswith("cache/")} == first
    convert.convert_release(release, out, seed=0, shards_per_split=2, progress=False)
    assert _files(out) == first
    other = tmp_path / "seed1"
    convert.convert_release(release, other, seed=1, shards_per_split=2, progress=False)
    m0, m1 = manifest.load(out), manifest.load(other)
    assert m0.data["splits"] != m1.data["splits"]
    assert {s: e["agatston"] for s, e in m0.studies.items()} == {
        s: e["agatston"] for s, e in m1.studies.items()
    }
    # No PHI in any output byte (shards, manifest, report, cache).
    markers = [m.encode() for m in truth["phi_markers"]]
    assert len(markers) > 10
    for folder in (out, other):
        for p in folder.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                assert not [m for m in markers if m in data], p
    for name, data in cached.items():
        assert not [m for m in markers if m in data], name
    # Another shard count: the old shards go, the records stay the same.
    convert.convert_release(release, other, seed=1, shards_per_split=3, progress=False)
    assert not list(other.glob("*-of-00002.array_record"))
    assert manifest.load(other).num_records("pretrain") == m1.num_records("pretrain")


def test_tiny_release_with_empty_splits(tmp_path):
    # Two patients: too few per category for val/test, which stay empty but valid; the
    # converter warns, and asking for an empty split's shards names it.
    coca_release.make_release(
        tmp_path / "rel", n_gated=2, n_nongated=0, seed=2, size=48, slices=(4, 5)
    )
    report = convert.convert_release(tmp_path / "rel", tmp_path / "out", seed=0, progress=False)
    m = manifest.load(tmp_path / "out")
    assert m.num_records("val") == 0 and m.num_records("test") == 0
    assert m.num_records("train") > 0
    assert m.num_records("pretrain") == m.num_records("train")
    assert [w.split(" is empty")[0] for w in report["warnings"]] == ["split 'val'", "split 'test'"]
    assert "WARNING: split 'test' is empty" in convert_report.format_summary(report)
    with pytest.raises(manifest.ManifestError, match=r"split 'test' has no records.*larger"):
        m.shard_paths("test")


def test_not_a_release(tmp_path):
    with pytest.raises(coca.CocaError, match="not found"):
        convert.convert_release(tmp_path, tmp_path / "out", progress=False)


def test_tool_converts(converted, tmp_path):
    release = converted[0]
    out = tmp_path / "tool"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_coca.py"), f"--release={release}",
         f"--out={out}", "--shards_per_split=2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "self-check" in proc.stdout and "slices_per_s" in proc.stdout
    assert _files(out) == _files(converted[2])


def _wait_for_lock(out: Path, pid: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Polls ``out/.lock`` until it holds `pid` (the process is inside its conversion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = out / ".lock"
        if lock.is_file() and lock.read_text().split("\n")[0].strip() == str(pid):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    raise AssertionError("the first conversion never took the lock")


@pytest.mark.slow
def test_two_conversions_into_one_folder(converted, tmp_path):
    """Seeds 0 and 1 into one folder at once: the second stops, the first is untouched."""
    release = converted[0]
    out = tmp_path / "shared"
    tool = [sys.executable, str(REPO / "tools" / "convert_coca.py"), f"--release={release}",
            f"--out={out}", "--shards_per_split=2"]  # fmt: skip
    first = subprocess.Popen(
        [*tool, "--seed=0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_lock(out, first.pid, first)
        os.kill(first.pid, signal.SIGSTOP)  # freeze it mid-conversion, lock held
        second = subprocess.run([*tool, "--seed=1"], capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err_first = first.communicate(timeout=120)
    assert second.returncode == 1, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: another conversion"), lines
    assert f"(pid {first.pid})" in lines[0] and str(out) in lines[0]
    assert first.returncode == 0, err_first
    # The survivor's output is exactly a lone seed-0 conversion: no shard of seed 1, no
    # held-out patient in pretrain, counts that match.
    assert _files(out) == _files(converted[2])
    m = manifest.load(out)
    held_out = {s for s, e in m.studies.items() if e["split"] in ("val", "test")}
    assert held_out and not held_out & {r["study"] for r in _read_split(out, "pretrain")}
    # The lock is free again: the next conversion into the folder proceeds.
    convert.convert_release(release, out, seed=0, shards_per_split=2, progress=False)
    assert _files(out) == _files(converted[2])


def test_stale_temp_files_of_a_killed_run_are_removed(converted, tmp_path):
    release, _, ref, _ = converted
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".train-00000-of-00002.array_record.4242-deadbeef.tmp"
    stale.write_bytes(b"half a shard")
    convert.convert_release(release, out, seed=0, shards_per_split=2, progress=False)
    assert not stale.exists() and _files(out) == _files(ref)


def _edit_first_roi(xml: Path, edit) -> None:
    """Applies `edit` to the first ROI with points and a vessel name."""
    with xml.open("rb") as f:
        data = plistlib.load(f)
    for image in data["Images"]:
        for roi in image["ROIs"]:
            if roi["Point_px"] and roi["Name"].lower().startswith(("left", "right")):
                edit(roi)
                with xml.open("wb") as f:
                    plistlib.dump(data, f)
                return
    raise AssertionError(f"no ROI to edit in {xml.name}")


def _edit_all_rois(xml: Path, edit) -> int:
    """Applies `edit` to every ROI with points and a vessel name; returns how many."""
    with xml.open("rb") as f:
        data = plistlib.load(f)
    rois = [
        roi
        for image in data["Images"]
        for roi in image["ROIs"]
        if roi["Point_px"] and roi["Name"].lower().startswith(("left", "right"))
    ]
    for roi in rois:
        edit(roi)
    with xml.open("wb") as f:
        plistlib.dump(data, f)
    return len(rois)


@pytest.fixture(scope="module")
def faulty_release(tmp_path_factory):
    """Six patients: one XML with a number as text, one whose ROIs all fail the self-check
    (Max 10 HU above the pixels': a disagreement no rasterisation explains)."""
    release = tmp_path_factory.mktemp("faulty") / "release"
    truth = coca_release.make_release(
        release, n_gated=6, n_nongated=1, seed=4, size=48, slices=(4, 6)
    )
    annotated = [int(p) for p, t in truth["gated"].items() if t["has_dicom"] and t["n_rois"]]
    bad_xml, unreliable = annotated[0], annotated[1]
    xml_dir = release / coca.GATED_DIR / "calcium_xml"
    _edit_first_roi(xml_dir / f"{bad_xml}.xml", lambda roi: roi.update(Area="0,42"))
    _edit_all_rois(xml_dir / f"{unreliable}.xml", lambda roi: roi.update(Max=roi["Max"] + 10))
    return release, truth, bad_xml, unreliable


@pytest.mark.parametrize("policy", ["exclude", "keep"])
def test_faulty_xml_costs_only_that_patients_labels(faulty_release, tmp_path, policy):
    release, truth, bad_xml, unreliable = faulty_release
    report = convert.convert_release(
        release, tmp_path / "out", seed=0, progress=False, unreliable_labels=policy
    )
    m = manifest.load(tmp_path / "out")
    bad_id, unrel_id = coca.gated_study_id(bad_xml), coca.gated_study_id(unreliable)
    # The malformed XML: labels left out with the reason, the scan still converted.
    [left_out] = [e for e in report["labels_left_out"] if e["study"] == bad_id]
    assert left_out["reason"].startswith(f"unusable calcium XML: {bad_xml}.xml ImageIndex")
    assert "Area is not a number: '0,42'" in left_out["reason"]
    assert m.studies[bad_id]["split"] == "pretrain" and m.studies[bad_id]["agatston"] is None
    assert not report["skipped_patients"] or bad_id not in {
        p["study"] for p in report["skipped_patients"]
    }
    # The self-check failure: per-ROI in the report, unreliable in the manifest.
    [entry] = report["labels_unreliable"]
    assert entry["study"] == unrel_id and entry["rois"][0]["reason"].startswith("self-check")
    flagged = m.studies[unrel_id]["labels_unreliable"]
    n_rois = sum(
        1 for r in coca.parse_calcium_xml(release / coca.GATED_DIR / "calcium_xml" /
                                          f"{unreliable}.xml")
        if len(r["points_px"]) and r["name"].lower().startswith(("left", "right"))
    )  # fmt: skip
    assert len(flagged) == n_rois and all("max 10 HU" in f for f in flagged)
    assert m.data["unreliable_labels"] == policy
    if policy == "exclude":
        assert m.studies[unrel_id]["split"] == "pretrain" and entry["split"] == "pretrain"
    else:
        assert m.studies[unrel_id]["split"] in ("train", "val", "test")
    # Every other patient converted as usual.
    others = [p for p, t in truth["gated"].items() if t["has_dicom"]]
    assert {coca.gated_study_id(int(p)) for p in others} <= set(m.studies)
    for p in others:
        if int(p) not in (bad_xml, unreliable):
            e = m.studies[coca.gated_study_id(int(p))]
            assert e["agatston"]["total"] == truth["gated"][p]["total"]
            assert "labels_unreliable" not in e


def test_bad_scores_sheet_stops_before_any_study_is_loaded(faulty_release, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(faulty_release[0], release)
    sheet = release / coca.NONGATED_DIR / "scores.xlsx"
    sheet.write_text("filename ,LCA,LAD,LCX,RCA,total\n0A,0,0,0,0,0\n")  # a CSV
    with pytest.raises(coca.CocaError, match=rf"{sheet}: not a readable \.xlsx"):
        convert.convert_release(release, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").rglob("*.records"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_coca.py"), f"--release={release}",
         f"--out={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(
        f"error: {sheet}: not a readable .xlsx workbook"
    )
