"""tools/convert_folder.py and data.convert_folder / data.folder_source on the liver phantoms.

Independent references: SimpleITK (ITK's own NIfTI reader and GDCM's DICOM series reader,
LPS world coordinates) for the HU and for where every voxel of image and mask lies; the
phantom's truth (`phantom.liver_folder`: the canonical HU and labels it wrote); hand-built
masks with hand-computed centres; a re-run whose study reader is made to fail (so it
cannot have read anything again); the guided crops' boxes as the pipeline reports them
(``debug=True``) against the masks in the records.
"""

import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grain
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from interrupt_tool import interrupt

from dinolg_jax.data import (
    convert_folder,
    dataset_writer,
    folder_source,
    manifest,
    pipeline,
    records,
)
from dinolg_jax.phantom import liver_folder

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "convert_folder.py"


@pytest.fixture(scope="module")
def nifti_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("nifti")
    cases = liver_folder.write_nifti_folder(root, n_cases=4, seed=3, size=48, n_slices=12)
    out = root / "out"
    report = convert_folder.convert_folder(
        root / "images", out, masks=root / "masks", seed=0, progress=False, keep_cache=True
    )
    return root, cases, out, report


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    cases = liver_folder.write_dicom_folder(root, n_cases=2, seed=5, size=40, n_slices=10)
    out = root / "out"
    report = convert_folder.convert_folder(root / "images", out, progress=False)
    return root, cases, out, report


def _study_records(out, sid):
    """{field: stacked values} of a study's records, from its first split in the manifest."""
    m = manifest.load(out)
    split = sorted(m.studies[sid]["records"])[0]
    source = grain.sources.ArrayRecordDataSource(m.shard_paths(split))
    recs = [records.decode(source[i]) for i in m.study_range(sid, split)]
    fixed = ("image", "labels", "pixel_mm", "position_mm", "orientation", "has_calcium")
    return {k: np.stack([r[k] for r in recs]) for k in fixed}


def _sitk_values_at_record_voxels(img, recs):
    """SimpleITK's voxel values at the world position of every record voxel [Z, H, W]."""
    z, h, w = recs["image"].shape
    px, orient, pos = recs["pixel_mm"][0], recs["orientation"][0], recs["position_mm"]
    col, row = orient[:3], orient[3:]
    k, r, c = np.meshgrid(np.arange(z), np.arange(h), np.arange(w), indexing="ij")
    world = pos[k] + (c * px[1])[..., None] * col + (r * px[0])[..., None] * row
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    to_index = np.linalg.inv(direction @ np.diag(img.GetSpacing()))
    index = (world - np.asarray(img.GetOrigin())) @ to_index.T  # [..., (i, j, k)]
    assert np.max(np.abs(index - np.rint(index))) < 1e-3  # voxel centres on voxel centres
    i, j, kk = np.rint(index).astype(int).transpose(3, 0, 1, 2)
    arr = sitk.GetArrayFromImage(img)  # [k, j, i]
    assert (i.min(), j.min(), kk.min()) == (0, 0, 0)
    assert (kk.max(), j.max(), i.max()) == tuple(n - 1 for n in arr.shape)
    return arr[kk, j, i]


def test_nifti_counts_and_splits(nifti_set):
    _, cases, out, report = nifti_set
    m = manifest.load(out)
    assert len(m.studies) == 4 and report["counts"]["studies_converted"] == 4
    assert report["counts"]["masks_used"] == 4 and report["skipped_studies"] == []
    truth_slices = {c.image: int(c.labels.any(axis=(1, 2)).sum()) for c in cases}
    by_source = {report["sources"][s]: s for s in m.studies}
    for name, n in truth_slices.items():
        assert m.studies[by_source[name]]["labelled_slices"] == n
    # 4 labelled studies: one to val, one to test (round(10 %) but at least one), two to
    # train; pretrain holds all but val and test.
    splits = {k: m.splits[k]["num_studies"] for k in ("pretrain", "train", "val", "test")}
    assert splits == {"pretrain": 2, "train": 2, "val": 1, "test": 1}
    held_out = {s for s, e in m.studies.items() if e["split"] in ("val", "test")}
    assert not held_out & set(m.studies_in("pretrain"))
    assert m.num_records("pretrain") == 24 and m.num_records("train") == 24
    # Ids carry no file name: hash of the relative path.
    for sid, rel in report["sources"].items():
        assert sid == folder_source.study_id("nifti", rel) and "case" not in sid


def test_nifti_hu_exact_and_masks_aligned_against_simpleitk(nifti_set):
    root, cases, out, report = nifti_set
    reoriented = 0
    for sid, rel in report["sources"].items():
        recs = _study_records(out, sid)
        image = sitk.ReadImage(str(root / "images" / rel))
        mask = sitk.ReadImage(str(root / "masks" / rel))
        np.testing.assert_array_equal(recs["image"], _sitk_values_at_record_voxels(image, recs))
        # The mask voxel at each image voxel's world position holds the record's label.
        np.testing.assert_array_equal(recs["labels"], _sitk_values_at_record_voxels(mask, recs))
        case = next(c for c in cases if c.image == rel)
        np.testing.assert_array_equal(recs["image"], case.hu)  # phantom truth
        np.testing.assert_array_equal(recs["labels"], case.labels)
        reoriented += bool(report["reoriented"].get(sid))
        assert recs["has_calcium"].tolist() == case.labels.any(axis=(1, 2)).tolist()
    assert reoriented == 3  # layouts 1, 2, 3 of the phantom are not canonical


def test_dicom_tree_hu_exact_against_simpleitk_and_no_identity(dicom_set):
    root, _, out, report = dicom_set
    m = manifest.load(out)
    assert report["counts"]["dicom_series"] == 2 and len(m.studies) == 2
    # Without masks: every study in pretrain, nothing else.
    assert m.num_records("pretrain") == 20
    assert [m.num_records(k) for k in ("train", "val", "test")] == [0, 0, 0]
    for sid, rel in report["sources"].items():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(root / "images" / rel)))
        recs = _study_records(out, sid)
        np.testing.assert_array_equal(
            recs["image"], _sitk_values_at_record_voxels(reader.Execute(), recs)
        )
        assert not recs["labels"].any() and not recs["has_calcium"].any()
    # The made-up identifying header values appear in no output file.
    blobs = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for phi in (b"LIV00", b"LIV01", b"QZX", b"INFIRMARY"):
        assert phi not in blobs


def test_dicom_series_with_masks_aligned(tmp_path):
    cases = liver_folder.write_dicom_folder(tmp_path, n_cases=1, seed=2, size=32, n_slices=6)
    report = convert_folder.convert_folder(
        tmp_path / "images", tmp_path / "out", masks=tmp_path / "masks", progress=False
    )
    (sid,) = report["sources"]
    recs = _study_records(tmp_path / "out", sid)
    mask = sitk.ReadImage(str(tmp_path / "masks" / cases[0].mask))
    np.testing.assert_array_equal(recs["labels"], _sitk_values_at_record_voxels(mask, recs))
    np.testing.assert_array_equal(recs["labels"], cases[0].labels)


def test_mask_centers_hand_built():
    square = np.zeros((9, 9), np.uint8)
    square[1:4, 2:6] = 3  # centroid (2, 3.5)
    ring = np.zeros((21, 21), np.uint8)
    rr, cc = np.mgrid[:21, :21]
    d = np.hypot(rr - 10, cc - 10)
    ring[(d >= 6) & (d <= 8)] = 7  # centroid (10, 10): outside the ring
    centers, values = convert_folder.mask_centers(square)
    np.testing.assert_allclose(centers, [[2.0, 3.5]])
    assert values.tolist() == [3]
    centers, values = convert_folder.mask_centers(ring)
    (r, c), v = centers[0], int(values[0])
    assert v == 7 and ring[int(r), int(c)] == 7 and r == int(r) and c == int(c)
    assert abs(np.hypot(r - 10, c - 10) - 6) < 0.5  # the ring's nearest voxel: inner edge
    both = square.copy()
    both[6:8, 6:8] = 1
    centers, values = convert_folder.mask_centers(both)
    assert values.tolist() == [1, 3]  # by label
    np.testing.assert_allclose(centers, [[6.5, 6.5], [2.0, 3.5]])


def test_guided_crop_points_lie_in_the_masks(nifti_set):
    _, _, out, report = nifti_set
    snapped = 0
    for sid in report["sources"]:
        recs = _study_records(out, sid)
        for z in range(recs["image"].shape[0]):
            rec = _single(out, sid, z)
            lab = rec["labels"]
            for (r, c), v in zip(rec["lesion_centers"], rec["lesion_vessels"], strict=True):
                ri, ci = round(float(r)), round(float(c))
                assert lab[ri, ci] == v  # inside its component's label
                snapped += float(r) == ri and float(c) == ci
            assert (len(rec["lesion_centers"]) > 0) == bool(lab.any())
    assert snapped > 0  # some liver sections are crescents: their centroid lay outside


def _single(out, sid, z):
    m = manifest.load(out)
    split = sorted(m.studies[sid]["records"])[0]
    source = grain.sources.ArrayRecordDataSource(m.shard_paths(split))
    return records.decode(source[m.study_range(sid, split)[z]])


def _tiny_config():
    spec = importlib.util.spec_from_file_location("dinolg_config", ROOT / "configs" / "dinolg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("tiny")


def test_guided_crops_centre_on_the_masks(nifti_set):
    _, _, out, _ = nifti_set
    data = _tiny_config().data
    data.manifest = str(out / "manifest.json")
    offset = float(data.guided_offset_px)
    m = manifest.load(out)
    source = grain.sources.ArrayRecordDataSource(m.shard_paths("pretrain"))
    labels = {}
    for i in range(len(source)):
        rec = records.decode(source[i])
        labels[(rec["study"], rec["slice"])] = rec["labels"]
    it = iter(pipeline.pretrain_dataset(out / "manifest.json", data, debug=True))
    ng, checked = int(data.n_global), 0
    for _ in range(6):
        batch = next(it)
        guided = np.flatnonzero(batch["guided_mask"]) + ng
        for b in range(batch["boxes"].shape[0]):
            lab = labels[(str(batch["study"][b]), int(batch["slice"][b]))]
            assert bool(batch["has_calcium"][b]) == bool(lab.any())
            if not lab.any():
                continue
            rows, cols = np.nonzero(lab)
            for g in guided:
                top, left, h, w = batch["boxes"][b, g]
                centre = np.array([top + (h - 1) / 2, left + (w - 1) / 2])
                # per axis: the offset, plus half a pixel of rounding of the box start
                cheb = np.max(np.abs(np.stack([rows, cols], 1) - centre), axis=1)
                assert cheb.min() <= offset + 0.5, (top, left, h, w)
                checked += 1
    assert checked >= 10


def test_skips_are_reported_and_bad_masks_left_out(tmp_path):
    liver_folder.write_nifti_folder(tmp_path, n_cases=4, seed=1, size=32, n_slices=6)
    liver_folder.write_dicom_folder(tmp_path / "d", n_cases=1, seed=1, size=32, n_slices=6)
    images, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(tmp_path / "d" / "images" / "patient-00", images / "patient-00")
    # A truncated NIfTI, a corrupt DICOM slice, a note, a mask matching nothing, a mask
    # on another grid (shifted 3 mm), a mask with a fractional label.
    blob = (images / "case-00.nii.gz").read_bytes()
    (images / "case-00.nii.gz").write_bytes(blob[: len(blob) // 2])
    dcm = sorted((images / "patient-00" / "ct").glob("*.dcm"))[2]
    dcm.write_bytes(dcm.read_bytes()[:300])
    (images / "notes.txt").write_text("scanner notes")
    shutil.copy(masks / "case-01.nii.gz", masks / "orphan.nii.gz")
    img = nib.load(str(masks / "case-02.nii.gz"))
    shifted = img.affine.copy()
    shifted[0, 3] += 3.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), shifted), str(masks / "case-02.nii.gz"))
    img = nib.load(str(masks / "case-03.nii.gz"))
    frac = np.asanyarray(img.dataobj).astype(np.float32)
    frac[frac == 1] = 1.5
    nib.save(nib.Nifti1Image(frac, img.affine), str(masks / "case-03.nii.gz"))

    report = convert_folder.convert_folder(images, tmp_path / "out", masks=masks, progress=False)
    skipped = {s["path"]: s["reason"] for s in report["skipped_studies"]}
    assert set(skipped) == {"case-00.nii.gz", "patient-00/ct"}
    assert "case-00.nii.gz: not a readable NIfTI file" in skipped["case-00.nii.gz"]
    assert f"patient-00/ct/{dcm.name}" in skipped["patient-00/ct"]
    assert str(tmp_path) not in json.dumps(report)  # paths relative to the roots
    assert {"path": "notes.txt", "reason": "not a DICOM or NIfTI file by its name (.txt)"} in (
        report["skipped_files"]
    )
    assert report["unmatched_masks"] == ["orphan.nii.gz"]
    left = {report["sources"][e["study"]]: e["reason"] for e in report["labels_left_out"]}
    assert set(left) == {"case-02.nii.gz", "case-03.nii.gz"}
    assert "lie up to 3 mm from the image's" in left["case-02.nii.gz"]
    assert "label 1.5 is not a whole number" in left["case-03.nii.gz"]
    m = manifest.load(tmp_path / "out")
    assert len(m.studies) == 3
    # Studies without a usable mask: pretrain only, zero labels.
    for sid in (e["study"] for e in report["labels_left_out"]):
        assert m.studies[sid]["split"] == "pretrain" and m.studies[sid]["labelled_slices"] == 0
    c = report["counts"]
    assert (c["studies_found"], c["studies_failed"], c["masks_used"]) == (5, 2, 1)
    assert "skipped case-00.nii.gz:" in convert_folder.format_summary(report)


def test_rerun_resumes_without_reading_and_gives_the_same_bytes(nifti_set, monkeypatch):
    root, _, out, report = nifti_set
    before = {p.name: p.read_bytes() for p in out.glob("*.array_record")}
    manifest_before = (out / "manifest.json").read_text()
    cache = {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()}

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run read a study again")

    monkeypatch.setattr(folder_source, "load_study", refuse)
    again = convert_folder.convert_folder(
        root / "images", out, masks=root / "masks", seed=0, progress=False, keep_cache=True
    )
    assert {p.name: p.read_bytes() for p in out.glob("*.array_record")} == before
    assert (out / "manifest.json").read_text() == manifest_before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()} == cache
    strip = lambda r: {k: v for k, v in r.items() if k != "timings"}
    assert strip(again) == strip(report)


def test_workers_give_the_same_bytes(nifti_set, tmp_path):
    root, _, out, report = nifti_set
    two = convert_folder.convert_folder(
        root / "images", tmp_path / "two", masks=root / "masks", workers=2, progress=False
    )
    assert two["splits"] == report["splits"]
    for p in out.glob("*.array_record"):
        assert (tmp_path / "two" / p.name).read_bytes() == p.read_bytes()
    assert (tmp_path / "two" / "manifest.json").read_text() == (out / "manifest.json").read_text()


def _tool(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, str(TOOL), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_cli_converts_and_refuses_mistakes_with_one_line(nifti_set, tmp_path):
    root, _, _, _ = nifti_set
    ok = _tool("--images", str(root / "images"), "--out", str(tmp_path / "o"), "--workers=1")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "pretrain" in ok.stdout and (tmp_path / "o" / "manifest.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    cases_ = [
        ("--images", str(tmp_path / "missing"), "--out", str(tmp_path / "a")),
        (
            "--images",
            str(root / "images"),
            "--masks",
            str(tmp_path / "nomask"),
            "--out",
            str(tmp_path / "a"),
        ),
        ("--images", str(root / "images"), "--out", str(tmp_path / "b"), "--workers=0"),
        ("--images", str(root / "images"), "--out", str(tmp_path / "b"), "--shards_per_split=x"),
        ("--images", str(root / "images"), "--out", str(tmp_path / "b"), "--seed=-1"),
        ("--images", str(empty), "--out", str(tmp_path / "c")),
        ("--out", str(tmp_path / "d")),
        ("--images", str(root / "images"), "--out", str(root / "images" / "e")),
    ]
    for args in cases_:
        res = _tool(*args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, (args, res.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.stderr)
    for name in "abcd":
        assert not (tmp_path / name).exists()  # nothing written for a mistake
    assert not (root / "images" / "e").exists()


def test_a_full_disk_is_one_error_and_no_index_is_left(nifti_set, tmp_path, monkeypatch):
    root, _, out, _ = nifti_set
    target = tmp_path / "out"
    shutil.copytree(out, target)  # an earlier, finished conversion
    assert (target / "manifest.json").is_file() and (target / "report.json").is_file()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(convert_folder, "CACHE_VERSION", convert_folder.CACHE_VERSION + 1)
    monkeypatch.setattr(dataset_writer, "atomic_write", full)
    with pytest.raises(dataset_writer.ConvertError) as err:
        convert_folder.convert_folder(root / "images", target, masks=root / "masks", progress=False)
    message = str(err.value)
    assert message.startswith(f"{target}: disk full while writing the study cache in ")
    # The estimate: 4.5 x the input files' bytes (images and masks), in MB.
    inputs = [*(root / "images").iterdir(), *(root / "masks").iterdir()]
    need = 4.5 * sum(p.stat().st_size for p in inputs) / 1e6
    assert f"needs about {need:,.0f} MB more there" in message and "\n" not in message
    assert not (target / "manifest.json").exists() and not (target / "report.json").exists()
    assert not list(target.rglob("*.tmp"))


def test_ctrl_c_is_one_line_and_leaves_no_manifest(nifti_set, tmp_path):
    root, _, out, _ = nifti_set
    target = tmp_path / "out"
    shutil.copytree(out, target)
    shutil.rmtree(target / "cache")  # every study is read again, slowly
    args = [f"--images={root / 'images'}", f"--out={target}"]
    slow = "dinolg_jax.data.folder_source.load_study"
    code, lines = interrupt(TOOL, slow, args, target, tmp_path)
    assert code == 130, lines
    assert lines == [
        f"error: interrupted: no manifest.json was written in {target}; re-run the same "
        "command to resume (finished studies are reused)"
    ], lines
    assert not (target / "manifest.json").exists() and not (target / "report.json").exists()


@pytest.mark.slow
def test_pretraining_on_the_nifti_phantom_runs_with_guided_crops(nifti_set, tmp_path):
    _, _, out, _ = nifti_set
    flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {flags}",
    )
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "pretrain.py"),
        "--config",
        f"{ROOT / 'configs' / 'dinolg.py'}:tiny",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.data.manifest={out / 'manifest.json'}",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["step"] == 6  # 24 records / 8, 2 epochs
    assert _tiny_config().data.n_local_guided == 2
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(losses) >= 6 and all(np.isfinite(losses))
    assert (tmp_path / "run" / "encoder" / "model_config.json").is_file()
