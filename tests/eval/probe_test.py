"""Probe: loss and threshold by hand, separable cases, sharded == single-device features."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from dinolg_jax.eval import features, probe
from dinolg_jax.models.probes import build_probe
from dinolg_jax.models.vit import ViT
from dinolg_jax.phantom.synthetic_records import write_dataset
from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib


def test_weighted_bce_by_hand():
    logits = jnp.array([0.0, 2.0, -1.0])
    labels = jnp.array([1, 0, 1])
    w = jnp.array([3.0, 1.0, 3.0])
    bce = [np.log(2.0), np.log1p(np.exp(2.0)), np.log1p(np.exp(1.0))]
    want = (3 * bce[0] + bce[1] + 3 * bce[2]) / 7
    np.testing.assert_allclose(float(probe.weighted_bce(logits, labels, w)), want, rtol=1e-6)
    assert probe.resolve_pos_weight("balanced", np.array([1, 0, 0, 0, 0, 1])) == 2.0
    assert probe.resolve_pos_weight(5, np.array([1, 0])) == 5.0
    with pytest.raises(ValueError, match="no slice with calcium"):
        probe.resolve_pos_weight("balanced", np.zeros(4, bool))


def test_threshold_meets_target_recall_on_constructed_case():
    # 40 positives with scores 0.31..0.70 and 160 negatives with scores 0.000..0.398.
    pos = 0.30 + 0.01 * np.arange(1, 41)
    neg = np.linspace(0.0, 0.398, 160)
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(40, bool), np.zeros(160, bool)])
    from dinolg_jax.eval.metrics import threshold_for_recall

    t = threshold_for_recall(scores, labels, 0.95)
    m = probe.score_metrics(scores, labels, t)
    # 38 of 40 positives needed: the threshold is the 38th largest positive score, 0.33.
    assert t == pytest.approx(0.33)
    assert m["recall"] == pytest.approx(38 / 40) and m["tp"] == 38 and m["fn"] == 2
    assert m["fp"] == int(np.sum(neg >= 0.33))  # negatives at or above 0.33
    assert m["tn"] + m["fp"] == 160
    # A higher threshold (next positive score) misses the target.
    assert probe.score_metrics(scores, labels, 0.34)["recall"] < 0.95


def _separable(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.12  # imbalanced, like calcified slices
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] += np.where(y, 3.0, -3.0)  # separable along one axis
    return x, y


def test_linear_probe_learns_a_separable_case():
    x, y = _separable(400, 0)
    model = build_probe("linear")
    pw = probe.resolve_pos_weight("balanced", y)
    params, hist = probe.train_probe(
        model, x, y, lr=0.05, epochs=15, batch_size=64, pos_weight=pw, seed=0
    )
    assert hist[-1] < 0.3 * hist[0]
    xt, yt = _separable(300, 1)
    s = probe.predict_scores(model, params, xt)
    m = probe.score_metrics(s, yt, 0.5)
    assert m["roc_auc"] > 0.999 and m["recall"] == 1.0 and m["specificity"] > 0.97


def test_probe_standardises_features_from_the_train_split_and_keeps_them_frozen():
    # Frozen DINO features look like this: a large common offset, a signal of ~1 % of it.
    rng = np.random.default_rng(3)
    n, f = 256, 16
    y = rng.random(n) < 0.2
    x = 5.0 + 0.05 * rng.standard_normal((n, f))
    x[:, 0] += 0.15 * y  # one feature carries the label: 3 % of the offset
    x = x.astype(np.float32)
    mean, inv_std = probe.feature_stats(x, chunk=100)  # chunks: 100 + 100 + 56 rows
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(inv_std, 1 / x.astype(np.float64).std(0), rtol=1e-4)
    tokens = np.stack([x, x + 1.0], 1)  # [N, 2, F]: statistics pool rows and tokens
    np.testing.assert_allclose(probe.feature_stats(tokens)[0], mean + 0.5, rtol=1e-6)

    model = build_probe("linear")
    params, _ = probe.train_probe(
        model, x, y, lr=1e-2, epochs=20, batch_size=64, pos_weight=4.0, seed=0
    )
    np.testing.assert_array_equal(params["standardize"]["mean"], mean)  # not trained
    np.testing.assert_array_equal(params["standardize"]["inv_std"], inv_std)
    from dinolg_jax.eval.metrics import roc_auc

    auc = roc_auc(probe.predict_scores(model, params, x), y)
    assert auc > 0.9, auc


def test_transformer_probe_learns_a_token_level_case():
    # Positive slices have one "bright" token at a random place; negatives have none.
    rng = np.random.default_rng(2)
    n, t, d = 160, 9, 8
    y = rng.random(n) < 0.25
    x = rng.normal(0, 0.3, (n, t, d)).astype(np.float16)
    where = rng.integers(0, t, n)
    x[np.flatnonzero(y), where[y], 0] += 3.0
    model = build_probe("transformer", width=16, depth=1, heads=2, max_tokens=16)
    params, hist = probe.train_probe(
        model, x, y, lr=3e-3, epochs=25, batch_size=32, pos_weight=3.0, seed=0
    )
    s = probe.predict_scores(model, params, x)
    assert hist[-1] < 0.5 * hist[0]
    assert probe.score_metrics(s, y, 0.5)["roc_auc"] > 0.95


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    manifest = write_dataset(root / "data", size=32, studies=2, slices_per_study=6)
    vit = ViT(variant="mu/8", ref_image_size=32, n_last_blocks=2)
    params = jax.jit(vit.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 32, 32, 1)))["params"]
    enc_dir = ckpt_lib.save_encoder(
        root / "pre" / "encoder", params, {"variant": "mu/8", "ref_image_size": 32}
    )
    return manifest, vit, params, enc_dir


def _data_config(batch: int):
    c = common.probe_config().data
    c.batch_size = batch
    return c


def test_sharded_features_equal_single_device_and_cache(tiny_encoder, tmp_path):
    manifest, vit, params, _ = tiny_encoder
    mesh8 = mesh_lib.make_mesh()
    mesh1 = mesh_lib.make_mesh(devices=jax.devices()[:1])
    kw = dict(token_pool=2, progress=False)
    f8 = features.extract_features(vit, params, manifest, "test", _data_config(8), mesh8, **kw)
    f1 = features.extract_features(vit, params, manifest, "test", _data_config(5), mesh1, **kw)
    np.testing.assert_allclose(f8["pooled"], f1["pooled"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        f8["tokens"].astype(np.float32), f1["tokens"].astype(np.float32), atol=2e-3
    )
    # 12 slices (2 studies x 6); 4*2 grid pooled by 2 -> 4 tokens; pooled = (2 + 1) * 32.
    assert f8["pooled"].shape == (12, 96) and f8["tokens"].shape == (12, 4, 32)
    np.testing.assert_array_equal(f8["has_calcium"], np.tile([1, 0, 0, 1, 0, 0], 2).astype(bool))
    # The mean patch token part equals the mean of the ViT's own final tokens.
    from dinolg_jax.data import pipeline

    batch = next(iter(pipeline.eval_dataset(manifest, "test", _data_config(12))))
    _, aux = vit.apply({"params": params}, batch["image"])
    np.testing.assert_allclose(f8["pooled"][:, 64:], aux["tokens"][:, 1:].mean(1), atol=1e-5)
    # Cached: a second call reads the .npy files back, keyed by encoder + split.
    cached = features.extract_features(
        vit, params, manifest, "test", _data_config(8), mesh8, cache_dir=tmp_path, **kw
    )
    again = features.extract_features(
        vit, params, manifest, "test", _data_config(8), mesh8, cache_dir=tmp_path, **kw
    )
    np.testing.assert_array_equal(cached["pooled"], f8["pooled"])
    np.testing.assert_array_equal(again["tokens"], cached["tokens"])
    assert len(list(tmp_path.iterdir())) == 1
    assert features.feature_key("a", "val", {}) != features.feature_key("a", "test", {})


@pytest.mark.slow
def test_run_probe_end_to_end(tiny_encoder, tmp_path):
    manifest, _, _, enc_dir = tiny_encoder
    c = common.probe_config("linear")
    c.encoder = str(enc_dir)
    c.data.manifest = str(manifest)
    c.data.batch_size = 8
    c.features.n_last_blocks = 2
    c.features.token_pool = 1
    c.optim.epochs = 30
    c.optim.batch_size = 12
    c.optim.lr = 0.05
    summary = probe.run_probe(c, tmp_path)
    assert summary["num_slices"] == {"train": 12, "val": 12, "test": 12}
    assert summary["pos_weight"] == 2.0  # 4 positives, 8 negatives
    # val == test here (write_dataset puts the same studies in every split), so the
    # val-chosen threshold meets the recall target on test too.
    assert summary["test"]["recall"] >= 0.95
    m = summary["test"]
    assert m["tp"] + m["fn"] == 4 and m["tn"] + m["fp"] == 8
    # intervals over the 2 test studies, around the values computed on all slices
    for key in ("roc_auc", "f1"):
        interval = m["intervals"][key]
        assert interval["value"] == m[key] and interval["n_groups"] == 2
        assert interval["ci95"][0] <= m[key] <= interval["ci95"][1]
    # the grid of its features: write_dataset's 0.7 mm records seen at the input size
    side = probe.load_probe(tmp_path)[2]["input_size"]
    assert summary["slice_size"] == [side, side]
    want = 0.7 * 32 / side
    assert summary["pixel_spacing_mm"]["median"] == pytest.approx([want, want], rel=1e-6)
    assert (tmp_path / "confusion_test.png").stat().st_size > 1000
    from PIL import Image

    from dinolg_jax.eval import roc_plot

    for split in ("val", "test"):  # the ROC with the chosen threshold marked
        with Image.open(tmp_path / f"roc_{split}.png") as png:
            assert png.size == tuple(round(v * roc_plot.DPI) for v in roc_plot.SIZE_IN)
    assert json.loads((tmp_path / "summary.json").read_text())["threshold"] == summary["threshold"]
    model, params, cfg = probe.load_probe(tmp_path)
    assert cfg["threshold"] == summary["threshold"] and cfg["input"] == "pooled"
    # The dense probe: one cell per 8 px patch of the 32 px slices (4 x 4), calcium where
    # any label pixel falls, counted here by reshaping the records' own labels.
    import grain

    from dinolg_jax.data import manifest as manifest_lib
    from dinolg_jax.data import records

    man = manifest_lib.load(manifest)
    labels = [
        records.decode(r)["labels"]
        for r in grain.sources.ArrayRecordDataSource(man.shard_paths("test"))
    ]
    want_cells = int(sum(lab.reshape(4, 8, 4, 8).any(axis=(1, 3)).sum() for lab in labels))
    dense = summary["patch"]
    assert want_cells > 0 and dense["test"]["num_calcium_cells"] == want_cells
    assert dense["test"]["num_cells"] == 12 * 16 and dense["train_rows"] == 12 * 16
    assert 0.0 <= dense["test"]["patch_roc_auc"] <= 1.0
    # The gate used by inference reproduces the test scores straight from images.
    enc_params, enc_cfg = ckpt_lib.load_encoder(enc_dir)
    vit = features.encoder_model(enc_cfg, cfg["n_last_blocks"])
    mesh = mesh_lib.make_mesh()
    from dinolg_jax.data import pipeline

    batch = next(iter(pipeline.eval_dataset(manifest, "test", _data_config(16))))
    images = mesh_lib.global_batch_from_numpy(np.asarray(batch["image"]), mesh)
    gate = probe.make_score_fn(vit, model, cfg, mesh)(enc_params, params, images)
    want = np.load(tmp_path / "test_scores.npy")
    np.testing.assert_allclose(np.asarray(gate)[:12], want, rtol=1e-5, atol=1e-6)


def test_pooling_with_patch_max_holds_the_max_over_final_patch_tokens():
    vit = ViT(variant="mu/8", n_last_blocks=1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 1)), jnp.float32)
    params = vit.init(jax.random.key(0), x)["params"]
    plain, _ = features.pooled_and_tokens(vit, params, x, 1)
    with_max, _ = features.pooled_and_tokens(vit, params, x, 1, "cls_mean_max")
    only_max, _ = features.pooled_and_tokens(vit, params, x, 1, "max")
    _, aux = vit.apply({"params": params}, x)
    patches = np.asarray(aux["tokens"][:, 1:], np.float32)  # [3, 4, 32]
    d = patches.shape[-1]
    np.testing.assert_array_equal(np.asarray(with_max)[:, : plain.shape[1]], plain)
    np.testing.assert_allclose(np.asarray(with_max)[:, -d:], patches.max(axis=1), rtol=1e-6)
    assert with_max.shape == (3, plain.shape[1] + d)
    np.testing.assert_array_equal(only_max, np.asarray(with_max)[:, -d:])
    with pytest.raises(ValueError, match="pooling"):
        features.pooled_and_tokens(vit, params, x, 1, "sum")


def test_split_intervals_draw_each_studys_slices_together(tmp_path):
    """Hand-checkable: 4 studies of 6 slices with the same scores and labels, so every
    draw of whole studies has ROC-AUC 7/8 and F1 1/2 (a point interval); drawn slice by
    slice instead, the interval widens."""
    manifest = write_dataset(tmp_path / "a", size=16, studies=4, slices_per_study=6, shards=2)
    # per study: positives 0.9, 0.4; negatives 0.5, 0.1, 0.3, 0.2 -> 7 of 8 pairs ordered;
    # at 0.45: TP 1 (0.9), FP 1 (0.5), FN 1 (0.4) -> precision = recall = F1 = 0.5
    scores = np.tile([0.9, 0.5, 0.1, 0.4, 0.3, 0.2], 4)
    labels = np.tile([1, 0, 0, 1, 0, 0], 4).astype(bool)
    got = probe.split_intervals(scores, labels, 0.45, manifest, "test")
    assert got["roc_auc"]["value"] == 0.875 and got["roc_auc"]["ci95"] == [0.875, 0.875]
    assert got["f1"]["value"] == 0.5 and got["f1"]["ci95"] == [0.5, 0.5]
    assert got["roc_auc"]["n_groups"] == 4 and got["roc_auc"]["n_boot"] == 1000
    from dinolg_jax.eval import metrics

    rows = metrics.binary_intervals(scores, labels, 0.45)  # slices as independent rows
    assert rows["roc_auc"].lo < 0.875 < rows["roc_auc"].hi
    # 2 studies: A ranks its pair right (AUC 1), B wrong (AUC 0); both pooled: 3 of 4
    # pairs. Drawing 2 studies gives AA (1/4: 1.0), AB or BA (1/2: 0.75), BB (1/4: 0.0),
    # so the 2.5 and 97.5 percentiles are 0 and 1: "0.75 [0.00, 1.00]".
    two = write_dataset(tmp_path / "b", size=16, studies=2, slices_per_study=2, shards=1)
    got = probe.split_intervals(
        np.array([0.9, 0.1, 0.2, 0.8]), np.array([1, 0, 1, 0], bool), 0.5, two, "test"
    )
    auc = got["roc_auc"]
    assert metrics.format_interval(auc["value"], auc["ci95"]) == "0.75 [0.00, 1.00]"
    with pytest.raises(ValueError, match="3 scores for the 4 records"):
        probe.split_intervals(np.zeros(3), np.zeros(3, bool), 0.5, two, "test")


def test_probe_training_shows_the_progress_line_and_keeps_its_result(capsys):
    """10 rows in batches of 4: 3 steps an epoch, 9 in 3 epochs; the line changes nothing."""
    x, y = _separable(10, 0)
    model = build_probe("linear")
    kwargs = dict(lr=0.05, epochs=3, batch_size=4, pos_weight=1.0, seed=0)
    with_line, hist = probe.train_probe(model, x, y, **kwargs)
    err = capsys.readouterr().err
    assert "step 9/9 (100%)" in err and "steps/s" in err
    quiet, hist_quiet = probe.train_probe(model, x, y, show_progress=False, **kwargs)
    assert capsys.readouterr().err == ""
    assert hist == hist_quiet
    assert ckpt_lib.params_checksum(with_line) == ckpt_lib.params_checksum(quiet)


def test_a_rerun_with_another_probe_config_stops_before_any_work(tmp_path):
    from dinolg_jax.runtime import run as run_lib
    from dinolg_jax.runtime.json_file import write_json

    c = common.probe_config("linear")
    c.encoder = str(tmp_path / "no_encoder")
    write_json(tmp_path / "config.json", c.to_dict())
    stored = (tmp_path / "config.json").read_text()
    other = common.probe_config("transformer")
    other.encoder = c.encoder
    with pytest.raises(run_lib.ConfigMismatchError, match=r"differs in .*probe\.name"):
        probe.run_probe(other, tmp_path)
    assert (tmp_path / "config.json").read_text() == stored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
