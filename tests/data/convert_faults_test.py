"""Conversion faults that must not look right (issue 23): untrustworthy HU, labels that
lose lesions, an interrupted run, a full disk, a release pointed at wrongly, bad flags."""

from __future__ import annotations

import errno
import os
import plistlib
import subprocess
import sys
from pathlib import Path

import grain
import pydicom
import pytest
from interrupt_tool import interrupt

from dinolg_jax.data import coca, convert, dataset_writer, manifest, records, shards
from dinolg_jax.phantom import coca_release

REPO = Path(__file__).resolve().parents[2]
HU_PID, PDA_PID, SYNONYM_PID = 0, 1, 3  # patient 0's series gets one odd intercept


def _rename_first_roi(xml: Path, name: str) -> str:
    """Renames the first ROI with an outline; returns its old name."""
    with xml.open("rb") as f:
        data = plistlib.load(f)
    for image in data["Images"]:
        for roi in image["ROIs"]:
            if roi["Point_px"]:
                old, roi["Name"] = roi["Name"], name
                with xml.open("wb") as f:
                    plistlib.dump(data, f)
                return old
    raise AssertionError(f"no ROI with points in {xml.name}")


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    release = base / "release"
    truth = coca_release.make_release(
        release, n_gated=6, n_nongated=1, seed=5, size=48, slices=(4, 6)
    )
    gated = release / coca.GATED_DIR
    odd = sorted((gated / "patient" / str(HU_PID)).rglob("IM-0001-*.dcm"))[1]
    ds = pydicom.dcmread(odd)
    ds.RescaleIntercept = float(ds.RescaleIntercept) + 24
    ds.save_as(odd)
    for pid in (PDA_PID, SYNONYM_PID):
        assert truth["gated"][str(pid)]["n_rois"], pid
    _rename_first_roi(gated / "calcium_xml" / f"{PDA_PID}.xml", "Posterior Descending Artery")
    old = _rename_first_roi(gated / "calcium_xml" / f"{SYNONYM_PID}.xml", "x")
    short = coca.calcium_xml.ROI_NAMES[old.lower()]
    _rename_first_roi(
        gated / "calcium_xml" / f"{SYNONYM_PID}.xml", ("RCA", "LAD", "LM", "LCX")[short - 1]
    )
    out = base / "out"
    report = convert.convert_release(release, out, seed=0, shards_per_split=2, progress=False)
    return release, truth, out, report, odd


def _studies_in_records(out: Path, split: str) -> set[str]:
    m = manifest.load(out)
    if m.num_records(split) == 0:
        return set()
    source = grain.sources.ArrayRecordDataSource(m.shard_paths(split))
    return {records.decode(source[i])["study"] for i in range(len(source))}


def test_untrustworthy_hu_keeps_the_study_out_of_every_split(faults):
    release, _, out, report, odd = faults
    m = manifest.load(out)
    sid = coca.gated_study_id(HU_PID)
    entry = m.studies[sid]
    rel = str(odd.relative_to(release))
    assert entry["split"] == "excluded" and entry["records"] == {}
    assert entry["hu_unreliable"] == [
        f"{rel}: RescaleSlope/Intercept 1/-1000 differ from 1/-1024 of "
        f"{entry['num_slices'] - 1} other slice(s)"
    ]
    for split in manifest.SPLITS:
        assert sid not in _studies_in_records(out, split), split
    [flag] = report["hu_unreliable"]
    assert flag["study"] == sid and flag["slices"][0]["path"] == rel
    assert report["counts"]["hu_unreliable_excluded"] == 1


def test_unknown_artery_marks_labels_unreliable_and_synonyms_keep_the_truth(faults):
    _, truth, out, report, _ = faults
    m = manifest.load(out)
    pda = m.studies[coca.gated_study_id(PDA_PID)]
    [line] = pda["labels_unreliable"]
    assert "('Posterior Descending Artery'): artery unknown" in line
    assert pda["split"] == "pretrain"  # out of train/val/test, scan kept for pretraining
    assert coca.gated_study_id(PDA_PID) in {u["study"] for u in report["labels_unreliable"]}
    syn = m.studies[coca.gated_study_id(SYNONYM_PID)]
    assert "labels_unreliable" not in syn
    t = truth["gated"][str(SYNONYM_PID)]
    assert syn["agatston"] == {v: t[v] for v in (*coca.VESSELS, "total")}


def test_release_one_level_too_deep_leaves_the_output_folder_as_it_was(faults, tmp_path):
    release = faults[0]
    out = tmp_path / "out"
    with pytest.raises(coca.CocaError, match="gated folder not found"):
        convert.convert_release(release / coca.GATED_DIR, out, progress=False)
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_coca.py"),
         f"--release={release / coca.GATED_DIR}", f"--out={out}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: --release={release / coca.GATED_DIR} is not a COCA")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("where", ["cache", "shards"])
def test_disk_full_is_one_error_naming_the_folder_and_nothing_looks_complete(
    faults, tmp_path, monkeypatch, where
):
    release = faults[0]
    out = tmp_path / "out"
    convert.convert_release(release, out, seed=0, shards_per_split=2, progress=False)
    assert (out / "manifest.json").is_file()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(convert, "CACHE_VERSION", convert.CACHE_VERSION + 1)  # no reuse
    monkeypatch.setattr(dataset_writer, "atomic_write" if where == "cache" else "write_shard", full)
    with pytest.raises(convert.ConvertError) as err:
        convert.convert_release(release, out, seed=0, shards_per_split=2, progress=False)
    message = str(err.value)
    assert message.startswith(f"{out}: disk full while writing ")
    assert "MB more there" in message and "MB are free" in message and "\n" not in message
    assert not (out / "manifest.json").exists() and not (out / "report.json").exists()
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(manifest.ManifestError, match="no manifest"):
        manifest.load(out)


def test_ctrl_c_leaves_no_manifest_and_one_line(faults, tmp_path):
    release = faults[0]
    out = tmp_path / "out"
    convert.convert_release(release, out, seed=0, shards_per_split=2, progress=False)
    args = [f"--release={release}", f"--out={out}", "--keep_cache", "--seed=1"]
    tool = REPO / "tools" / "convert_coca.py"
    code, lines = interrupt(tool, "dinolg_jax.data.convert.prepare_study", args, out, tmp_path)
    assert code == 130, lines  # progress bars aside, one line
    assert lines == [
        f"error: interrupted: no manifest.json was written in {out}; re-run the same command "
        "to resume (finished studies are reused)"
    ], lines
    assert not (out / "manifest.json").exists() and not (out / ".lock").read_text().strip()


def test_a_flipped_byte_read_through_the_manifest_names_the_shard(faults, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(faults[2], out)
    m = manifest.load(out)
    shard = Path(m.shard_paths("pretrain")[0])
    data = bytearray(shard.read_bytes())
    data[len(data) // 50] ^= 0xFF  # inside the first record's chunk
    shard.write_bytes(bytes(data))
    with pytest.raises(shards.ShardReadError, match=rf"cannot read shard {shard} record 0:"):
        manifest.load(out).slice_shape("pretrain")


@pytest.mark.parametrize(
    "tool, args, message",
    [
        (
            "convert_coca.py",
            ["--shards_per_split=0"],
            "flag --shards_per_split=0: 0 is not a positive",
        ),
        ("convert_coca.py", ["--seed=-1"], "flag --seed=-1: -1 is not a non-negative"),
        ("make_phantom.py", ["--patients=0"], "flag --patients=0: 0 is not a positive"),
        ("make_phantom.py", ["--min_slices=9", "--max_slices=4"], "--min_slices=9 is above"),
        ("verify_dataset.py", [], "does not exist"),
    ],
)
def test_out_of_range_flags_are_one_error_line_exit_2_before_any_work(
    tmp_path, tool, args, message
):
    out = tmp_path / "out"
    if tool == "convert_coca.py":
        args = [f"--release={tmp_path}", f"--out={out}", *args]
    elif tool == "make_phantom.py":
        args = [f"--out={out}", *args]
    else:
        args = [str(out)]
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / tool), *args], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()
