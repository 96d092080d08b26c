"""A pretraining workdir's encoder -> model.safetensors + config.json + README.md: the
project's importer gets the exported params back bit for bit, config.json's normalisation
is the pipeline's, the card carries the run's numbers, the bytes repeat; the tool's errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dinolg
from dinolg_jax.data import transforms
from dinolg_jax.models import torch_export
from dinolg_jax.models.torch_import import vit_params_from_torch
from dinolg_jax.models.vit import ViT
from dinolg_jax.runtime import checkpoint, encoder_release

REPO = Path(__file__).resolve().parents[2]
WINDOW = (-200.0, 600.0)
METRICS = {
    "loss": 2.5,
    "teacher_entropy": 1.25,
    "teacher_batch_entropy": 3.5,
    "teacher_kl": 2.25,
    "online_knn_roc_auc": 0.8125,
    "init_knn_roc_auc": 0.625,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A pretraining workdir as tools/pretrain.py leaves it: encoder/, config.json, summary."""
    root = tmp_path_factory.mktemp("run") / "my_run"
    config = dinolg.get_config("tiny")
    config.data.hu_window = WINDOW
    variables = ViT("mu/8").init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    checkpoint.save_encoder(root / "encoder", variables["params"], config.model.to_dict(), step=120)
    (root / "config.json").write_text(json.dumps(config.to_dict()))
    summary = {"step": 120, "total_steps": 120, "status": "done", "metrics": METRICS}
    summary["health"] = {"collapse": {"collapsed": False}, "init": {"left_init": True}}
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_export_round_trips_and_states_the_input(workdir, tmp_path):
    out = encoder_release.export_encoder(workdir, tmp_path / "export")
    folder = tmp_path / "export"
    assert sorted(out["files"]) == ["README.md", "config.json", "model.safetensors"]
    params, _ = checkpoint.load_encoder(workdir)
    stored = json.loads((workdir / "encoder" / "export.json").read_text())["params_checksum"]
    sd = torch_export.load_safetensors(folder / "model.safetensors")
    back = vit_params_from_torch(sd, "mu/8", ref_image_size=224)
    assert checkpoint.params_checksum(back) == stored == out["params_checksum"]
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert out["n_params"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    config = json.loads((folder / "config.json").read_text())
    assert config["variant"] == "mu/8" and config["in_chans"] == 1
    assert config["img_size"] == 224 and config["patch_size"] == 8 and config["step"] == 120
    assert (config["embed_dim"], config["depth"], config["num_heads"]) == (32, 2, 2)
    inp = config["input"]
    assert inp["hu_window"] == list(WINDOW)
    assert (inp["scale"], inp["offset"]) == (2 / 800, -0.5)  # by hand for [-200, 600]
    hu = np.array([-1024, -200, 0, 130, 600, 3000], np.int16)
    np.testing.assert_allclose(
        np.clip(hu, *WINDOW) * inp["scale"] + inp["offset"],
        transforms.normalize_hu(hu, WINDOW),
        atol=1e-6,
    )
    tiny = dinolg.get_config("tiny").data
    assert config["trained_crop_sizes"] == {"global": tiny.global_size, "local": tiny.local_size}

    card = (folder / "README.md").read_text()
    assert "`my_run` at step 120 of 120" in card
    assert str(workdir.parent) not in card + json.dumps(config)  # only the run's name
    for line in ("| DINO loss | 2.5 |", "| teacher KL (batch - sample, nats) | 2.25 |"):
        assert line in card
    assert "| online kNN ROC-AUC (val) | 0.8125 |" in card
    assert "Health: collapsed False, left the init True; warnings: none." in card
    assert f"`{stored}`" in card and f"`{out['safetensors_sha256']}`" in card
    assert torch_export.timm_snippet("mu/8", 224) in card


def test_same_workdir_same_bytes_and_the_encoder_folder_works(workdir, tmp_path):
    encoder_release.export_encoder(workdir, tmp_path / "a")
    encoder_release.export_encoder(workdir / "encoder", tmp_path / "b")
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _tool(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, str(REPO / "tools/export_encoder.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_tool_writes_the_export_and_refuses_a_workdir_without_encoder(workdir, tmp_path):
    ok = _tool("--workdir", str(workdir), "--out", str(tmp_path / "out"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "ViT mu/8 at step 120" in ok.stdout
    assert (tmp_path / "out" / "model.safetensors").is_file()
    (tmp_path / "empty").mkdir()
    bad = _tool("--workdir", str(tmp_path / "empty"), "--out", str(tmp_path / "out2"))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no pretrain run" in lines[0]
    assert not (tmp_path / "out2").exists()
