"""Official-DINO state dict -> Flax ViT params: reproduces the numpy reference; errors; tool."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from vit_reference import random_state_dict, reference_vit

from dinolg_jax.models.torch_import import backbone_state_dict, vit_params_from_torch
from dinolg_jax.models.vit import ViT

REPO = Path(__file__).resolve().parents[2]


def _run(params, x):
    model = ViT("mu/8", ref_image_size=32)
    return jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_converted_params_reproduce_reference(in_chans):
    rng = np.random.default_rng(in_chans)
    sd = random_state_dict(rng, width=32, depth=2, patch=8, grid=4, in_chans=in_chans)
    params = vit_params_from_torch(sd, "mu/8", ref_image_size=32)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
    x = rng.standard_normal((2, 40, 24, 1)).astype(np.float32)  # 5 x 3 patches: interpolated
    cls, aux = _run(params, x)
    # The RGB reference sees the grey image replicated into 3 channels.
    ref = reference_vit(sd, np.repeat(x, in_chans, axis=-1), patch=8, heads=2)
    np.testing.assert_allclose(aux["tokens"], ref["tokens"], atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(cls, ref["tokens"][:, 0], atol=2e-5, rtol=2e-5)


def test_errors_name_the_keys():
    rng = np.random.default_rng(0)
    sd = random_state_dict(rng, width=32, depth=2, patch=8, grid=4)
    missing = {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.bias"):
        vit_params_from_torch(missing, "mu/8", ref_image_size=32)
    with pytest.raises(ValueError, match=r"not used.*blocks\.2\.norm1\.weight"):
        vit_params_from_torch(
            sd | {"blocks.2.norm1.weight": sd["norm.weight"]}, "mu/8", ref_image_size=32
        )
    with pytest.raises(ValueError, match="pos_embed"):  # a 224-px table is 28 x 28
        vit_params_from_torch(sd, "mu/8", ref_image_size=224)
    two = sd | {"patch_embed.proj.weight": sd["patch_embed.proj.weight"].repeat(2, axis=1)}
    with pytest.raises(ValueError, match="input channels"):
        vit_params_from_torch(two, "mu/8", ref_image_size=32)
    with pytest.raises(ValueError, match="shape mismatch"):
        vit_params_from_torch(sd, "mu/16", ref_image_size=32)


def test_backbone_state_dict_from_full_checkpoint():
    full = {
        "teacher": {"backbone.cls_token": 1, "backbone.norm.weight": 2, "head.mlp.0.weight": 3},
        "student": {"module.backbone.cls_token": 4, "module.head.last_layer.weight_g": 5},
        "epoch": 100,
    }
    assert backbone_state_dict(full) == {"cls_token": 1, "norm.weight": 2}
    assert backbone_state_dict(full, "student") == {"cls_token": 4}
    assert backbone_state_dict({"cls_token": 7}) == {"cls_token": 7}


def test_import_tool_writes_a_loadable_encoder(tmp_path):
    from dinolg_jax.runtime.checkpoint import load_encoder

    rng = np.random.default_rng(5)
    sd = random_state_dict(rng, width=32, depth=2, patch=8, grid=4, in_chans=3)
    full = {f"backbone.{k}": v for k, v in sd.items()} | {"head.mlp.0.weight": np.zeros(3)}
    np.savez(tmp_path / "dino.npz", **full)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, str(REPO / "tools/import_torch_dino.py"), "--pth", "dino.npz"]
    cmd += ["--variant", "mu/8", "--ref_image_size", "32", "--out", "enc"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    params, model_config = load_encoder(tmp_path / "enc")
    assert model_config["variant"] == "mu/8" and model_config["ref_image_size"] == 32
    expected = vit_params_from_torch(sd, "mu/8", ref_image_size=32)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
