"""Tests for dinolg_jax.inference (system, sources, run) with stand-in models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fake_ct import make_ct

from dinolg_jax.data.volume import CTVolume, Geometry
from dinolg_jax.inference import batch, nifti, sources, system
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.scoring.agatston import agatston

Z, S = 10, 16
PIXEL_MM = (0.5, 0.5)
THICK = 3.0


def make_study(study_id: str = "s0") -> CTVolume:
    """Slices 2 and 5 hold bright calcium (600 HU, gate flags them); slice 7 a faint one
    (300 HU, below the gate, found by the U-Net alone); bone-free background at 40 HU."""
    hu = np.full((Z, S, S), 40, np.int16)
    hu[2, 3:6, 1:3] = 600  # columns 0-3 -> vessel 1 (RCA) in the stand-in segmenter
    hu[5, 8:10, 9:12] = 450  # columns 8-11 -> vessel 3 (LCA)
    hu[5, 12, 13] = 600  # columns 12-15 -> vessel 4 (LCX); 1 px = 0.25 mm2 < 1 mm2: dropped
    hu[7, 10:13, 5:8] = 300  # columns 4-7 -> vessel 2 (LAD)
    labels = np.zeros_like(hu, np.uint8)
    labels[2][hu[2] >= 130] = 1
    geometry = Geometry.axial(PIXEL_MM, np.arange(Z) * THICK, THICK, origin_xy_mm=(-4.0, 6.0))
    return CTVolume(study_id, hu, geometry, labels=labels)


def gate_apply(params, x):
    """p(calcium) = max normalised HU of the slice, scaled: >= 0.5 iff a pixel >= 500 HU."""
    return jnp.clip(jnp.max(x[..., 0], axis=(1, 2)) * params["scale"], 0.0, 1.0)


def seg_apply(params, x):
    """Class = 1 + column // 4 where HU >= 130, background elsewhere, as logits."""
    del params
    w = x.shape[2]
    vessel = 1 + jnp.arange(w) // (w // 4)
    cls = jnp.where(x[..., 0] >= 0.13, vessel[None, None, :], 0)
    return jax.nn.one_hot(cls, 5) * 10.0


def expected_labels(hu: np.ndarray, slices, min_px: int = 4) -> np.ndarray:
    """Independent numpy / scipy version of the stand-in segmenter on the given slices,
    keeping the scored voxels only: 4-connected lesions of at least ``min_px`` pixels
    (1 mm2 at 0.5 mm pixels), as the label outputs hold them."""
    from scipy import ndimage

    out = np.zeros(hu.shape, np.uint8)
    vessel = 1 + np.arange(hu.shape[2]) // (hu.shape[2] // 4)
    for z in slices:
        out[z] = np.where(hu[z] >= 130, vessel[None, :], 0)
        for v in range(1, 5):
            comp, n = ndimage.label(out[z] == v)
            sizes = np.bincount(comp.ravel(), minlength=n + 1)
            out[z][(comp > 0) & (sizes[comp] < min_px)] = 0
    return out


def expected_scored(hu: np.ndarray, slices) -> np.ndarray:
    """:func:`expected_labels` as scored and written (NIfTI, SEG): the 1-px LCX spot on
    slice 5 (0.25 mm2, under the 1 mm2 minimum) is not a lesion, so it is left out."""
    out = expected_labels(hu, slices)
    out[5, 12, 13] = 0
    return out


class Spy:
    """Host-side prepare that records every HU slice it is handed."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        self.seen.extend(np.asarray(hu))
        return (hu.astype(np.float32) / 1000.0)[..., None]


def build(mesh, batch_size=8, spy=None):
    gate = system.SliceModel(gate_apply, {"scale": jnp.float32(1.0)}, Spy(), "gate")
    seg = system.SliceModel(seg_apply, {}, spy or Spy(), "seg")
    return system.CacPipeline(seg, mesh, gate=gate, threshold=0.5, batch_size=batch_size)


@pytest.fixture(scope="module")
def mesh8():
    return mesh_lib.make_mesh()


def test_gate_selects_flagged_slices_and_unet_runs_only_there(mesh8) -> None:
    study = make_study()
    spy = Spy()
    pipe = build(mesh8, spy=spy)
    res = pipe.score(study, "gated", keep_labels=True)
    expected_p = [0.04, 0.04, 0.6, 0.04, 0.04, 0.6, 0.04, 0.3, 0.04, 0.04]
    np.testing.assert_allclose(res.probabilities, expected_p, rtol=1e-6)
    np.testing.assert_array_equal(res.flagged, [2, 5])
    # The U-Net saw exactly slices 2 and 5, once each, in one padded batch of 8.
    assert len(spy.seen) == 2
    np.testing.assert_array_equal(np.stack(spy.seen), study.hu[[2, 5]])
    assert pipe.seg_runner.calls == 1 and pipe.seg_runner.slices == 2
    assert pipe.gate_runner.slices == Z and pipe.gate_runner.calls == 2  # 10 -> 8 + 2 (padded)
    np.testing.assert_array_equal(res.labels, expected_scored(study.hu, [2, 5]))
    ref = agatston(study.hu, expected_labels(study.hu, [2, 5]), PIXEL_MM, THICK)
    assert res.scores.per_vessel == ref.per_vessel and res.scores.total == ref.total
    # By hand: slice 2 RCA 3x2 px of 0.25 mm2 at 600 HU: 1.5 mm2 x 4; slice 5 LCA 2x3 px
    # at 450 HU: 1.5 x 4; the 1-px LCX spot is under 1 mm2. Thickness 3 mm: factor 1.
    assert res.summary["per_vessel"] == {"RCA": 6.0, "LAD": 0.0, "LCA": 6.0, "LCX": 0.0}
    assert res.summary["total"] == 12.0
    assert res.summary["paper4"] == "moderate" and res.summary["standard5"] == "11-100"
    assert res.summary["cac_drs"] == "A1/N2"
    # Ground truth (RCA only on slice 2) scored with the same convention.
    assert res.truth["per_vessel"]["RCA"] == 6.0 and res.truth["total"] == 6.0
    assert set(res.timings) == {"gate", "segment", "score"}


def test_unet_only_segments_every_slice_and_finds_the_faint_lesion(mesh8) -> None:
    study = make_study()
    spy = Spy()
    pipe = build(mesh8, spy=spy)
    res = pipe.score(study, "unet_only", keep_labels=True)
    assert res.probabilities is None
    np.testing.assert_array_equal(res.flagged, np.arange(Z))
    assert len(spy.seen) == Z and pipe.gate_runner.calls == 0
    # Slice 7's LAD lesion: 3x3 px = 2.25 mm2 at 300 HU -> weight 3 -> 6.75.
    assert res.summary["per_vessel"] == {"RCA": 6.0, "LAD": 6.75, "LCA": 6.0, "LCX": 0.0}
    assert res.summary["cac_drs"] == "A1/N3"
    np.testing.assert_array_equal(res.labels, expected_scored(study.hu, range(Z)))


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batch_size_and_sharding_do_not_change_results(mesh8, batch_size) -> None:
    study = make_study()
    ref = build(mesh8, batch_size=8).score(study, "gated", keep_labels=True)
    one = mesh_lib.make_mesh(devices=jax.devices()[:1])
    for mesh in (one, mesh8):
        got = build(mesh, batch_size=batch_size).score(study, "gated", keep_labels=True)
        np.testing.assert_array_equal(got.probabilities, ref.probabilities)
        np.testing.assert_array_equal(got.labels, ref.labels)
        assert got.summary == ref.summary
    assert build(one, batch_size=batch_size).seg_runner.batch_size == batch_size
    assert build(mesh8, batch_size=batch_size).seg_runner.batch_size == 8 * -(-batch_size // 8)


def test_pipeline_rejects_bad_inputs(mesh8) -> None:
    seg = system.SliceModel(seg_apply, {}, Spy())
    with pytest.raises(ValueError, match="threshold"):
        system.CacPipeline(seg, mesh8, threshold=1.5)
    with pytest.raises(ValueError, match="scoring options"):
        system.CacPipeline(seg, mesh8, scoring={"thresh": 1})
    pipe = system.CacPipeline(seg, mesh8)
    with pytest.raises(ValueError, match="no gate"):
        pipe.score(make_study(), "gated")
    with pytest.raises(ValueError, match="mode"):
        pipe.score(make_study(), "both")
    shrink = system.SliceModel(lambda p, x: seg_apply(p, x)[:, ::2, ::2], {}, Spy())
    with pytest.raises(ValueError, match="input resolution"):
        system.CacPipeline(shrink, mesh8).score(make_study(), "unet_only")


# ----------------------------------------------------------------------------- sources, run


def write_dicom_series(folder: Path, hu: np.ndarray, z0: float = 0.0) -> None:
    """A minimal axial CT series (stored = HU + 1024, slope 1, intercept -1024), with
    fake_ct's patient name, ID, study date and institution in every header."""
    for k in range(hu.shape[0]):
        make_ct(
            folder / f"IM-{k + 1:04d}.dcm", z=z0 + THICK * k, instance=k + 1,
            pixels=(hu[k].astype(np.int32) + 1024).astype(np.uint16),
            series_uid="1.2.826.0.1.77", series_number=1, spacing=PIXEL_MM, thickness=THICK,
            kvp=120.0, mass=None, ipp_xy=(-4.0, 6.0),
        )  # fmt: skip


def test_corrupt_study_gets_error_row_and_others_complete(tmp_path: Path, mesh8) -> None:
    study = make_study()
    root = tmp_path / "dicoms"
    for name in ("a", "b", "c/series_1"):  # a study folder may hold series subfolders
        write_dicom_series(root / name, study.hu)
    bad = root / "b" / "IM-0004.dcm"
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated pixel data
    tasks = sources.dicom_tasks(root)
    assert [t.study_id for t in tasks] == ["a", "b", "c"]
    out = tmp_path / "out"
    summary = batch.run_inference(
        build(mesh8),
        tasks,
        out,
        modes=("gated", "unet_only"),
        write_nifti=True,
        write_seg=True,
        source_roots=[root],
    )
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["study"], r["mode"], r["status"]) for r in rows] == [
        ("a", "gated", "ok"),
        ("a", "unet_only", "ok"),
        ("b", "gated", "error"),
        ("b", "unet_only", "error"),
        ("c", "gated", "ok"),
        ("c", "unet_only", "ok"),
    ]
    b = rows[2]
    assert b["error_stage"] == "read" and b["error_type"] == "NotDicomError"
    assert "truncated" in b["error_message"] and str(tmp_path) not in b["error_message"]
    assert b["error_message"].startswith("b/IM-0004.dcm")
    a_g, a_u = rows[0], rows[1]
    assert a_g["flagged_slices"] == "2 5" and a_g["num_flagged"] == "2"
    assert (float(a_g["total"]), float(a_u["total"]), float(a_u["LAD"])) == (12.0, 18.75, 6.75)
    assert a_g["paper4"] == "moderate" and a_u["cac_drs"] == "A1/N3"
    assert a_g["true_total"] == ""  # DICOM folders carry no ground truth
    for key in ("t_read_s", "t_gate_s", "t_segment_s", "t_score_s", "t_total_s"):
        assert float(a_g[key]) >= 0.0
    per_study = json.loads((out / "studies" / "a.gated.json").read_text())
    assert per_study["flagged_slices"] == [2, 5]
    assert per_study["prediction"]["per_vessel"]["LCA"] == 6.0
    assert per_study["convention"]["threshold_hu"] == 130.0
    err = json.loads((out / "studies" / "b.unet_only.json").read_text())
    assert err["error"]["type"] == "NotDicomError"
    text = "".join(p.read_text() for p in out.rglob("*.json")) + (out / "results.csv").read_text()
    for value in ("Secret", "424242", "20010911", "Fake General"):  # fake_ct's identifiers
        assert value not in text
    # Summary: 2 of 3 studies per mode, throughput counted over the good ones.
    s = json.loads((out / "summary.json").read_text())
    gated = s["modes"]["gated"]
    assert (gated["studies"], gated["ok"], gated["slices"], gated["segmented_slices"]) == (
        3,
        2,
        20,
        4,
    )
    assert gated["errors"][0]["study"] == "b" and gated["slices_per_s"] > 0
    assert s["modes"]["unet_only"]["segmented_slices"] == 20
    assert summary["modes"]["gated"]["ok"] == 2
    # NIfTI: predicted labels and the CT on the same grid.
    labels, affine = nifti.read_nifti(out / "nifti" / "a.unet_only.labels.nii.gz")
    np.testing.assert_array_equal(labels, expected_scored(study.hu, range(Z)))
    ct, ct_affine = nifti.read_nifti(out / "nifti" / "a.ct.nii.gz")
    np.testing.assert_array_equal(ct, study.hu)
    # The DICOM's geometry (write_dicom_series: IPP (-4, 6, 3k), 0.5 mm pixels) in RAS.
    ras = np.diag([-0.5, -0.5, 3.0, 1.0])
    ras[:3, 3] = (4.0, -6.0, 0.0)
    np.testing.assert_allclose(affine, ras, atol=1e-5)
    np.testing.assert_array_equal(ct_affine, affine)
    assert not (out / "nifti" / "b.ct.nii.gz").exists()
    # DICOM SEG per study and mode, read back by the SOP instances it references.
    from dinolg_jax.inference import seg as seg_lib

    vol_a = tasks[0].load()
    back = seg_lib.read_seg_labels(out / "seg" / "a.gated.labels.seg.dcm", vol_a)
    np.testing.assert_array_equal(back, expected_scored(study.hu, [2, 5]))
    assert sorted(p.name for p in (out / "seg").iterdir()) == sorted(
        f"{n}.{m}.{kind}" for n in "ac" for m in ("gated", "unet_only")
        for kind in ("labels.seg.dcm", "scores.sr.dcm")
    )  # fmt: skip
    assert s["seg_skipped"] == {}


def test_dicom_tasks_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        sources.dicom_tasks(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no"):
        sources.dicom_tasks(tmp_path)


def test_load_segmenter_from_a_workdir(tmp_path: Path, mesh8, seg_workdir) -> None:
    """The checkpointed segmenter restores to the same net and the training preparation."""
    from dinolg_jax.inference import loading
    from dinolg_jax.runtime import checkpoint as ckpt_lib

    workdir, config, model, state = seg_workdir
    seg = loading.load_segmenter(workdir, slice_size=S)
    assert seg.name == "unet@7"
    assert ckpt_lib.params_checksum(seg.params) == ckpt_lib.params_checksum(state.params)
    hu = make_study().hu
    x = seg.prepare(hu)
    np.testing.assert_allclose(x[..., 0], np.clip(hu, -1000, 1000) / 1000.0, atol=1e-6)
    pipe = system.CacPipeline(seg, mesh8, batch_size=8)
    got = pipe.segment(hu, range(Z))
    ref = np.argmax(jax.jit(model.apply)({"params": state.params}, jnp.asarray(x)), -1)
    np.testing.assert_array_equal(got, ref)
    bad = tmp_path / "bad"
    bad.mkdir()
    resized = config.copy_and_resolve_references()
    resized.data.eval_size = 8
    (bad / "config.json").write_text(json.dumps(resized.to_dict(), default=str))
    with pytest.raises(ValueError, match="resized"):
        loading.load_segmenter(bad, slice_size=S)
    with pytest.raises(loading.WorkdirError, match=r"config\.json"):
        loading.load_segmenter(tmp_path)


def test_load_segmenter_refuses_params_that_fail_their_stored_checksum(
    tmp_path: Path, seg_workdir
) -> None:
    import shutil

    from dinolg_jax.inference import loading
    from dinolg_jax.runtime import checkpoint as ckpt_lib

    workdir, _, _, state = seg_workdir
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    meta = copy / "checkpoints" / "7" / "checksum" / "metadata"
    stored = json.loads(meta.read_text())
    assert stored["params"] == ckpt_lib.params_checksum(state.params)  # what the save wrote
    # Params and stored checksum disagree, as when a weight changes on disk after the save.
    stored["params"] = "0" * 64
    meta.write_text(json.dumps(stored))
    with pytest.raises(ckpt_lib.CheckpointError, match="do not match the checksum"):
        loading.load_segmenter(copy, slice_size=S)
    # A step saved before checksums existed restores (unverified) to the same params.
    shutil.rmtree(copy / "checkpoints" / "7" / "checksum")
    seg = loading.load_segmenter(copy, slice_size=S)
    assert ckpt_lib.params_checksum(seg.params) == ckpt_lib.params_checksum(state.params)


def test_manifest_source_and_infer_from_config(tmp_path: Path, seg_workdir) -> None:
    """A manifest split regrouped per study (across shards), scored U-Net-only with report."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "infer_config", Path(__file__).parents[2] / "configs" / "infer.py"
    )
    infer_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer_config)
    from dinolg_jax.phantom import synthetic_records

    manifest = synthetic_records.write_dataset(
        tmp_path / "records", size=S, studies=3, slices_per_study=5, shards=2, splits=("test",)
    )
    tasks = sources.manifest_tasks(manifest, "test")
    assert [t.study_id for t in tasks] == [f"synthetic-{i:04d}" for i in range(3)]
    import grain

    from dinolg_jax.data import manifest as manifest_lib
    from dinolg_jax.data import records

    man = manifest_lib.load(manifest)
    src = grain.sources.ArrayRecordDataSource(man.shard_paths("test"))
    vol = tasks[1].load()  # records 5..9: straddles the two shards (8 + 7 records)
    recs = [records.decode(src[i]) for i in range(5, 10)]
    np.testing.assert_array_equal(vol.hu, np.stack([r["image"] for r in recs]))
    np.testing.assert_array_equal(vol.labels, np.stack([r["labels"] for r in recs]))
    assert vol.pixel_mm == tuple(float(v) for v in recs[0]["pixel_mm"])

    config = infer_config.get_config()
    config.segmenter_workdir = str(seg_workdir[0])
    config.source.path = str(manifest)
    config.out_dir = str(tmp_path / "out")
    config.mode = "unet_only"
    config.note = "Demo-size run."
    summary = batch.infer_from_config(config)
    m = summary["modes"]["unet_only"]
    assert (m["studies"], m["ok"], m["slices"], m["segmented_slices"]) == (3, 3, 15, 15)
    text = Path(summary["report"]).read_text()
    assert "Agatston convention: threshold_hu = 130.0, connectivity = 4" in text
    assert "Demo-size run." in text and "## U-Net only" in text
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    # Ground truth: the records' labels, scored with the same convention.
    truth = agatston(vol.hu, vol.labels, vol.pixel_mm, vol.slice_thickness_mm)
    assert float(rows[1]["true_total"]) == pytest.approx(truth.total, abs=1e-4)


@pytest.mark.parametrize("probe_name", ["linear", "transformer"])
def test_gate_from_parts_matches_features_then_probe(mesh8, probe_name) -> None:
    """Encoder + probe as one jitted, sharded gate == features.pooled_and_tokens -> probe."""
    from dinolg_jax.eval.features import encoder_model, pooled_and_tokens
    from dinolg_jax.inference import loading
    from dinolg_jax.models.probes import build_probe

    enc_cfg = {"variant": "mu/8", "ref_image_size": 16}
    vit = encoder_model(enc_cfg, 2)
    x = jnp.zeros((1, S, S, 1))
    rng = np.random.default_rng(2)

    def random_params(module, *args):  # shapes by eval_shape: nothing compiled for init
        shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
        return jax.tree.map(lambda a: 0.2 * rng.standard_normal(a.shape, np.float32), shapes)

    enc_params = random_params(vit, x)
    kwargs = (
        {"width": 8, "depth": 1, "heads": 2, "max_tokens": 16} if probe_name != "linear" else {}
    )
    probe = build_probe(probe_name, **kwargs)
    feats = jax.eval_shape(lambda p, x: pooled_and_tokens(vit, p, x, 1), enc_params, x)
    feat = feats[0] if probe_name == "linear" else feats[1]
    probe_params = random_params(probe, jnp.zeros(feat.shape, feat.dtype))
    gate = loading.gate_from_parts(
        enc_cfg, enc_params, probe_name, kwargs, probe_params,
        n_last_blocks=2, token_pool=1, hu_window=(-1000, 1000),
    )  # fmt: skip
    seg = system.SliceModel(seg_apply, {}, Spy())
    pipe = system.CacPipeline(seg, mesh8, gate=gate, batch_size=8)
    hu = np.random.default_rng(5).integers(-1000, 1000, (Z, S, S)).astype(np.int16)
    got = pipe.gate_probabilities(hu)
    xs = jnp.asarray(np.clip(hu, -1000, 1000)[..., None] / 1000.0, jnp.float32)

    def ref_fn(pe, pp, xs):
        pooled, tokens = pooled_and_tokens(vit, pe, xs, 1)
        logits = probe.apply({"params": pp}, pooled if probe_name == "linear" else tokens)
        return jax.nn.sigmoid(logits)

    ref = np.asarray(jax.jit(ref_fn)(enc_params, probe_params, xs))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert got.std() > 1e-4  # the probabilities do depend on the slice


def test_load_gate_from_probe_workdir(tmp_path: Path, mesh8) -> None:
    """Encoder export + probe export + config.json -> the same gate and its threshold."""
    from dinolg_jax.eval import probe as probe_lib
    from dinolg_jax.eval.features import encoder_model
    from dinolg_jax.inference import loading
    from dinolg_jax.runtime import checkpoint as ckpt_lib

    rng = np.random.default_rng(3)
    enc_cfg = {"variant": "mu/8", "ref_image_size": 16}
    vit = encoder_model(enc_cfg, 1)
    shapes = jax.eval_shape(vit.init, jax.random.PRNGKey(0), jnp.zeros((1, S, S, 1)))["params"]
    enc = jax.tree.map(lambda a: 0.2 * rng.standard_normal(a.shape, np.float32), shapes)
    ckpt_lib.save_encoder(tmp_path / "pre" / "encoder", enc, enc_cfg)
    width = 2 * 32  # CLS of 1 block + mean patch token, mu width 32
    probe_params = {"Dense_0": {"kernel": rng.standard_normal((width, 1), np.float32),
                                "bias": np.array([0.1], np.float32)},
                    "standardize": {"mean": rng.standard_normal(width, np.float32),
                                    "inv_std": rng.uniform(0.5, 2, (width,))}}  # fmt: skip
    pcfg = {"name": "linear", "kwargs": {}, "input": "pooled", "n_last_blocks": 1,
            "token_pool": 1, "hu_window": [-1000.0, 1000.0], "eval_size": 0, "input_size": S,
            "threshold": 0.37, "encoder_checksum": ckpt_lib.params_checksum(enc)}  # fmt: skip
    work = tmp_path / "probe_run"
    probe_lib.save_probe(work / probe_lib.PROBE_DIR, probe_params, pcfg)
    (work / "config.json").write_text(json.dumps({"encoder": str(tmp_path / "pre")}))
    gate, threshold = loading.load_gate(work)
    assert threshold == 0.37 and gate.name == "mu/8+linear"
    direct = loading.gate_from_parts(
        enc_cfg, enc, "linear", {}, probe_params,
        n_last_blocks=1, token_pool=1, hu_window=(-1000, 1000),
    )  # fmt: skip
    seg = system.SliceModel(seg_apply, {}, Spy())
    hu = rng.integers(-1000, 1000, (4, S, S)).astype(np.int16)
    p1 = system.CacPipeline(seg, mesh8, gate=gate, batch_size=8).gate_probabilities(hu)
    p2 = system.CacPipeline(seg, mesh8, gate=direct, batch_size=8).gate_probabilities(hu)
    np.testing.assert_array_equal(p1, p2)
    pcfg["encoder_checksum"] = "0" * 64
    probe_lib.save_probe(work / probe_lib.PROBE_DIR, probe_params, pcfg)
    with pytest.raises(ValueError, match="checksums differ"):
        loading.load_gate(work)


def _probe_workdir(root: Path, size: int, pcfg_extra: dict, config_extra: dict):
    """Encoder + linear probe exports at ``size`` px, as train/pretrain + train/probe write."""
    from dinolg_jax.eval import probe as probe_lib
    from dinolg_jax.eval.features import encoder_model
    from dinolg_jax.runtime import checkpoint as ckpt_lib

    rng = np.random.default_rng(8)
    enc_cfg = {"variant": "mu/8", "ref_image_size": size}
    vit = encoder_model(enc_cfg, 1)
    x = jnp.zeros((1, size, size, 1))
    shapes = jax.eval_shape(vit.init, jax.random.PRNGKey(0), x)["params"]
    enc = jax.tree.map(lambda a: 0.3 * rng.standard_normal(a.shape, np.float32), shapes)
    ckpt_lib.save_encoder(root / "pre" / "encoder", enc, enc_cfg)
    width = 2 * 32
    probe_params = {"Dense_0": {"kernel": 0.05 * rng.standard_normal((width, 1), np.float32),
                                "bias": np.array([0.0], np.float32)},
                    "standardize": {"mean": np.zeros(width, np.float32),
                                    "inv_std": np.ones(width, np.float32)}}  # fmt: skip
    pcfg = {"name": "linear", "kwargs": {}, "input": "pooled", "n_last_blocks": 1,
            "token_pool": 1, "hu_window": [-1000.0, 1000.0], "eval_size": 0,
            "threshold": 0.5, "encoder_checksum": ckpt_lib.params_checksum(enc),
            **pcfg_extra}  # fmt: skip
    work = root / "probe_run"
    probe_lib.save_probe(work / probe_lib.PROBE_DIR, probe_params, pcfg)
    (work / "config.json").write_text(json.dumps({"encoder": str(root / "pre"), **config_extra}))
    return work


def test_gate_scores_a_512_px_study_at_its_trained_64_px(tmp_path: Path, mesh8) -> None:
    """Issue 11: a probe trained at 64 px scores a 512 px study with the probabilities of
    the same study resized to 64 px first (and not with those of 512 px inputs)."""
    from dinolg_jax.data import transforms
    from dinolg_jax.inference import loading

    gate, _ = loading.load_gate(_probe_workdir(tmp_path, 64, {"input_size": 64}, {}))
    yy, xx = np.mgrid[0:512, 0:512]
    hu512 = np.stack(
        [
            np.where(((yy - 256) / (220.0 - 70 * k)) ** 2 + ((xx - 256) / 230.0) ** 2 < 1, 40, -900)
            + np.where(((yy - 200 - 40 * k) ** 2 + (xx - 300) ** 2) < 300 * (k + 1) ** 2, 800, 0)
            for k in range(3)
        ]
    ).astype(np.int16)  # within the HU window: normalising and resizing commute
    seg = system.SliceModel(seg_apply, {}, Spy())
    pipe = system.CacPipeline(seg, mesh8, gate=gate, batch_size=8)
    p512 = pipe.gate_probabilities(hu512)
    hu64 = np.stack([transforms.resized_crops(h, [(0, 0, 512, 512)], 64)[0] for h in hu512])
    p64 = pipe.gate_probabilities(hu64)  # already at the trained size: not resized again
    np.testing.assert_allclose(p512, p64, rtol=1e-5, atol=1e-6)
    assert (
        p64.std() > 1e-4
    )  # the slices differ (100x the tolerance above), and so do their probabilities
    unfixed = loading.gate_from_parts(
        {"variant": "mu/8", "ref_image_size": 64}, gate.params["encoder"], "linear", {},
        gate.params["probe"], n_last_blocks=1, token_pool=1, hu_window=(-1000, 1000),
        eval_size=0,
    )  # fmt: skip
    x512 = unfixed.prepare(hu512[:1])  # the old behaviour: the ViT sees 512 px slices
    assert x512.shape == (1, 512, 512, 1)
    stale = np.asarray(jax.jit(unfixed.apply)(unfixed.params, jnp.asarray(x512)))
    assert abs(float(stale.reshape(-1)[0]) - float(p64[0])) > 1e-4


def test_gate_input_size_of_an_older_probe_export(tmp_path: Path) -> None:
    """Exports without ``input_size``: eval_size, else the record size of the training data."""
    from dinolg_jax.inference import loading
    from dinolg_jax.phantom import synthetic_records

    manifest = synthetic_records.write_dataset(tmp_path / "records", size=24, studies=1)
    work = _probe_workdir(tmp_path / "a", 24, {}, {"data": {"manifest": str(manifest)}})
    pcfg = loading.read_config(work)
    assert loading.gate_input_size(work, {"eval_size": 0}, pcfg) == 24
    assert loading.gate_input_size(work, {"eval_size": 32}, pcfg) == 32
    assert loading.gate_input_size(work, {"input_size": 40, "eval_size": 0}, pcfg) == 40
    gate, _ = loading.load_gate(work)
    assert gate.prepare(np.zeros((2, 128, 128), np.int16)).shape == (2, 24, 24, 1)
    bare = _probe_workdir(tmp_path / "b", 24, {}, {})
    with pytest.raises(loading.WorkdirError, match="cannot tell the slice size"):
        loading.load_gate(bare)


def test_study_report_text_and_overlays(tmp_path: Path, mesh8) -> None:
    from dinolg_jax.inference import study_report

    study = make_study()
    res = build(mesh8).score(study, "unet_only", keep_labels=True)
    res.timings["read"] = 0.5
    text = study_report.format_report(res)
    lines = text.splitlines()
    assert "RCA            6.0         4.5        1" in lines  # 1.5 mm2 x 3 mm
    assert "LAD            6.8         6.8        1" in lines  # 6.75, 2.25 mm2 x 3 mm
    assert "total         18.8        15.8        3" in lines  # 4.5 + 6.75 + 4.5 mm3
    assert "Risk category: moderate (paper, 4 classes); 11-100 (standard, 5 classes)" in lines
    assert "CAC-DRS: A1/N3" in lines
    assert any(line.startswith("Convention: HU >= 130, 4-connectivity") for line in lines)
    paths = study_report.write_overlays(tmp_path, study, res, res.labels)
    assert [p.name for p in paths] == ["slice_0002.png", "slice_0005.png", "slice_0007.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    rgb, title, legend = study_report.overlay_slice(study, res, res.labels, 5)
    assert "slice 6 of 10 from the feet, z = 15.0 mm" in title  # make_study: z = 3 mm x slice
    assert "window -200 to 800 HU" in title
    assert tuple(rgb[12, 13]) == study_report.SMALL_COLOUR  # the 0.25 mm2 LCX pixel
    assert tuple(rgb[8, 9]) == study_report.VESSEL_COLOURS[3]  # LCA, scored
    assert [t for t, _ in legend] == [
        "RCA: 0.0",
        "LAD: 0.0",
        "LCA: 6.0",
        "LCX: 0.0",
        "< 1 mm\u00b2 (not scored)",
    ]
    out = study_report.write_outputs(tmp_path / "all", study, res, res.labels)
    assert [p.name for p in out["nifti"]] == ["ct.nii.gz", "labels.nii.gz"]
    assert out["seg"] is None and "not read from DICOM" in out["seg_skipped"]
    err = system.StudyResult("x", "gated", error={"stage": "read", "type": "E", "message": "m"})
    assert study_report.format_report(err) == "Study x: FAILED at read: E: m"


def test_score_folder_writes_nifti_seg_and_overlays(tmp_path: Path, mesh8) -> None:
    """tools/score_study.py's path: a DICOM folder -> ct/labels NIfTI, SEG and overlays."""
    from dinolg_jax.inference import seg as seg_lib
    from dinolg_jax.inference import study_report

    study = make_study()
    write_dicom_series(tmp_path / "dcm", study.hu, z0=-40.0)
    vol, res, labels = study_report.score_folder(build(mesh8), tmp_path / "dcm", "gated")
    out = study_report.write_outputs(tmp_path / "out", vol, res, labels)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ct.nii.gz",
        "labels.nii.gz",
        "labels.seg.dcm",
        "slice_0002.png",
        "slice_0005.png",
    ]
    np.testing.assert_array_equal(seg_lib.read_seg_labels(out["seg"], vol), labels)
    back, affine = nifti.read_nifti(tmp_path / "out" / "labels.nii.gz")
    np.testing.assert_array_equal(back, expected_scored(study.hu, [2, 5]))
    assert affine[2, 3] == -40.0 and (affine[0, 3], affine[1, 3]) == (4.0, -6.0)


def test_release_source_truth_matches_phantom_and_no_phi(tmp_path: Path, mesh8) -> None:
    """Gated phantom patients scored with their annotations as truth; non-gated vs sheet."""
    from dinolg_jax.data import coca
    from dinolg_jax.eval import report
    from dinolg_jax.phantom import coca_release

    rel = tmp_path / "release"
    truth = coca_release.make_release(rel, n_gated=2, n_nongated=1, seed=1, size=32, slices=(8, 10))
    tasks = sources.release_tasks(rel, "gated")
    assert [t.study_id for t in tasks] == ["gated-0000", "gated-0001"]  # pid 2: XML only
    out = tmp_path / "out"
    batch.run_inference(build(mesh8), tasks, out, modes=("unet_only",), source_roots=[rel])
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row, pid in zip(rows, ("0", "1"), strict=True):
        assert row["status"] == "ok"
        for key in ("RCA", "LAD", "LCA", "LCX", "total"):
            assert float(row[f"true_{key}"]) == pytest.approx(truth["gated"][pid][key], abs=1e-4)
        assert row["true_paper4"] == truth["gated"][pid]["category_paper4"]
    ng_tasks = sources.release_tasks(rel, "nongated")
    assert [t.study_id for t in ng_tasks] == ["nongated-0"]
    out_ng = tmp_path / "out_ng"
    summary = batch.run_inference(build(mesh8), ng_tasks, out_ng, modes=("unet_only",))
    pred = {r.study_id: {**r.summary["per_vessel"], "total": r.summary["total"]}
            for r in summary["results"]["unet_only"]}  # fmt: skip
    ev = report.evaluate_nongated(pred, coca.load_nongated_scores(rel))
    assert ev["studies"] == ["nongated-0"] and ev["missing_prediction"] == []
    text = "".join(p.read_text() for d in (out, out_ng) for p in d.rglob("*.*"))
    assert not [m for m in truth["phi_markers"] if m in text]


def test_scores_and_patient_rows_from_results_equal_results_csv(tmp_path: Path, mesh8) -> None:
    """The in-memory flow (results -> evaluation, patient rows) gives what results.csv holds."""
    from dinolg_jax.experiments import stages
    from dinolg_jax.scoring.agatston import VESSELS

    def fail() -> CTVolume:
        raise OSError("unreadable")

    tasks = [
        sources.StudyTask("a", lambda: make_study("a")),
        sources.StudyTask("b", fail),
        sources.StudyTask("c", lambda: make_study("c")),
    ]
    summary = batch.run_inference(build(mesh8), tasks, tmp_path, modes=("gated", "unet_only"))
    results = summary["results"]
    with (tmp_path / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    keys = (*VESSELS, "total")
    truth, preds = batch.scores_from_results(results)
    ok = [r for r in rows if r["status"] == "ok"]
    assert truth == {r["study"]: {k: float(r[f"true_{k}"]) for k in keys} for r in ok}
    for mode in ("gated", "unet_only"):
        expected = {r["study"]: {k: float(r[k]) for k in keys} for r in ok if r["mode"] == mode}
        assert preds[mode] == expected and set(expected) == {"a", "c"}
    assert batch.convention(results) == {
        "threshold_hu": 130.0,
        "connectivity": 4,
        "min_area_mm2": 1.0,
        "thickness_normalisation": True,
    }
    assert batch.convention({"gated": [system.StudyResult("b", "gated")]}) is None
    patients = stages.patient_rows(results)
    assert [(p["study"], p["mode"]) for p in patients] == [(r["study"], r["mode"]) for r in rows]
    for p, r in zip(patients, rows, strict=True):
        assert p["pred_total"] == (float(r["total"]) if r["total"] else None)
        assert p["true_total"] == (float(r["true_total"]) if r["true_total"] else None)
        assert (p["pred_category"], p["true_category"]) == (r["paper4"], r["true_paper4"])
        assert p["num_flagged"] == int(r["num_flagged"])
        assert p["num_slices"] == int(r["num_slices"])
        assert p["error"] == (r["error_type"] or None)
    assert patients[2]["error"] == "OSError"


def test_a_study_of_another_size_than_the_segmenter_learnt_gets_an_error_not_zeros(
    tmp_path: Path, mesh8, seg_workdir
) -> None:
    """The trained slice size comes from summary.json, else from the training manifest;
    a study of another size is refused in one line, one of the trained size is scored."""
    import shutil

    from dinolg_jax.inference import loading
    from dinolg_jax.phantom import synthetic_records

    workdir, _, _, _ = seg_workdir
    unchecked = loading.load_segmenter(workdir)
    assert unchecked.input_shape is None  # nothing says what it learnt at: not checked
    recorded = tmp_path / "recorded"
    shutil.copytree(workdir, recorded)
    (recorded / "summary.json").write_text(json.dumps({"input_shape": [S, S]}))
    seg = loading.load_segmenter(recorded)
    assert seg.input_shape == (S, S)
    pipe = system.CacPipeline(seg, mesh8, batch_size=8)
    hu = make_study().hu
    ref = system.CacPipeline(unchecked, mesh8, batch_size=8).segment(hu, range(Z))
    np.testing.assert_array_equal(pipe.segment(hu, range(Z)), ref)  # its own size: scored
    big = np.repeat(np.repeat(hu, 2, axis=1), 2, axis=2)  # the same study at twice the size
    with pytest.raises(ValueError, match=rf"trained on {S} x {S} px slices and this study's are "
                       rf"{2 * S} x {2 * S} px"):  # fmt: skip
        pipe.segment(big, range(Z))
    assert pipe.segment(big, []).shape == big.shape  # nothing to segment: nothing refused

    # Without a summary: the record size of the manifest it was trained on.
    from_manifest = tmp_path / "from_manifest"
    shutil.copytree(workdir, from_manifest)
    manifest = synthetic_records.write_dataset(tmp_path / "records", size=24, studies=1)
    cfg = json.loads((from_manifest / "config.json").read_text())
    cfg["data"]["manifest"] = str(manifest)
    (from_manifest / "config.json").write_text(json.dumps(cfg))
    assert loading.load_segmenter(from_manifest).input_shape == (24, 24)


def test_warmup_compiles_exactly_what_scoring_uses(tmp_path: Path, mesh8) -> None:
    """run_inference warms up with each study's pixel spacing: scoring then traces (so
    compiles) nothing. A 16 px study at the segmenter's 0.5 mm is segmented as it is; one
    of the same size at 0.8 mm is resampled to the grid, which runs the segmenter's
    probability function: warmed up by its shape alone (no spacing) it would compile
    inside the timed scoring (the old behaviour, checked below)."""
    import collections

    from dinolg_jax.inference.resolution import ModelGrid

    traces: collections.Counter = collections.Counter()

    def gate(params, x):
        traces["gate"] += 1  # runs once per trace, i.e. per compilation
        return gate_apply(params, x)

    def seg(params, x):
        traces["segmenter"] += 1
        return seg_apply(params, x)

    def pipeline() -> system.CacPipeline:
        grid = ModelGrid(PIXEL_MM, (S, S), origin="test")
        seg_model = system.SliceModel(seg, {}, Spy(), "seg", (S, S), grid)
        gate_model = system.SliceModel(gate, {"scale": jnp.float32(1.0)}, Spy(), "gate")
        return system.CacPipeline(seg_model, mesh8, gate=gate_model, batch_size=8)

    coarse = make_study("coarse")
    coarse = CTVolume("coarse", coarse.hu, Geometry.axial((0.8, 0.8), coarse.z_mm, THICK))
    pipe = pipeline()
    assert pipe.warmup_plan((S, S), PIXEL_MM) == (("gate", (S, S)), ("segmenter", (S, S)))
    assert pipe.warmup_plan((S, S), (0.8, 0.8)) == (
        ("gate", (S, S)),
        ("segmenter probabilities", (S, S)),
    )
    scoring_traces = []
    score = pipe.score

    def counted_score(study, mode, **kw):
        before = sum(traces.values())
        result = score(study, mode, **kw)
        scoring_traces.append(sum(traces.values()) - before)
        return result

    pipe.score = counted_score
    tasks = [sources.StudyTask("fine", lambda: make_study("fine")),
             sources.StudyTask("coarse", lambda: coarse)]  # fmt: skip
    summary = batch.run_inference(pipe, tasks, tmp_path / "out", modes=("gated", "unet_only"))
    assert summary["studies"] == {"scored": 2, "skipped": 0, "failed": 0}
    assert scoring_traces == [0, 0, 0, 0]  # two studies x two modes, nothing compiled
    assert sorted(summary["compile_s"]) == [
        "gate 16x16; segmenter 16x16",
        "gate 16x16; segmenter probabilities 16x16",
    ]
    # one trace per runner: gate, segmenter (argmax), segmenter probabilities
    assert traces == {"gate": 1, "segmenter": 2}
    # The old call, warmup(shape) without the spacing, leaves the resampled study's
    # function to be compiled while its scoring is timed.
    traces.clear()
    old = pipeline()
    old.warmup((S, S))
    before = sum(traces.values())
    old.score(coarse, "unet_only")
    assert sum(traces.values()) - before == 1
