"""Flax ViT params -> official DINO / timm names in safetensors: the importer inverts it bit
for bit, and the exported tensors drive the independent numpy reference ViT to the JAX
encoder's output."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from vit_reference import flax_to_torch_names, reference_vit

from dinolg_jax.models import torch_export
from dinolg_jax.models.torch_import import vit_params_from_torch
from dinolg_jax.models.vit import ViT
from dinolg_jax.runtime.checkpoint import params_checksum

MU = {"variant": "mu/8", "ref_image_size": 32}  # width 32, depth 2, 2 heads, G = 4


@functools.cache
def _params():
    """mu/8 params: the ViT's own init plus N(0, 0.1) so no weight is trivially 0 or 1."""
    variables = jax.jit(ViT(**MU).init)(jax.random.key(3), jnp.zeros((1, 32, 32, 1)))
    leaves, treedef = jax.tree.flatten(variables["params"])
    rng = np.random.default_rng(4)
    leaves = [
        (np.asarray(x) + rng.standard_normal(x.shape) * 0.1).astype(np.float32) for x in leaves
    ]
    return jax.tree.unflatten(treedef, leaves)


def test_export_then_import_is_bitwise_identity(tmp_path):
    params = _params()
    sd = torch_export.vit_params_to_torch(params, "mu/8")
    # Names and layouts are official DINO's (the test suite's own independent mapping).
    ref = flax_to_torch_names(params)
    assert sorted(sd) == sorted(ref)
    for k, v in ref.items():
        assert sd[k].shape == v.shape and sd[k].dtype == np.float32, k
        np.testing.assert_array_equal(sd[k], v)
    assert sd["patch_embed.proj.weight"].shape == (32, 1, 8, 8)
    assert sd["blocks.1.attn.qkv.weight"].shape == (96, 32)
    sha = torch_export.save_safetensors(sd, tmp_path / "model.safetensors")
    loaded = torch_export.load_safetensors(tmp_path / "model.safetensors")
    back = vit_params_from_torch(loaded, "mu/8", ref_image_size=32)
    assert params_checksum(back) == params_checksum(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    # The same params give the same bytes.
    assert torch_export.save_safetensors(sd, tmp_path / "again.safetensors") == sha
    assert (tmp_path / "again.safetensors").read_bytes() == (
        tmp_path / "model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize("hw", [(32, 32), (40, 24)])  # the reference grid; interpolated
def test_exported_tensors_drive_the_reference_vit(tmp_path, hw):
    params = _params()
    torch_export.save_safetensors(
        torch_export.vit_params_to_torch(params, "mu/8"), tmp_path / "model.safetensors"
    )
    sd = torch_export.load_safetensors(tmp_path / "model.safetensors")
    x = np.random.default_rng(5).uniform(-1, 1, (2, *hw, 1)).astype(np.float32)
    cls, aux = jax.jit(lambda p, x: ViT(**MU).apply({"params": p}, x))(params, x)
    ref = reference_vit(sd, x, patch=8, heads=2)
    np.testing.assert_allclose(aux["tokens"], ref["tokens"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(cls, ref["tokens"][:, 0], rtol=0, atol=1e-5)


def test_errors():
    params = _params()
    with pytest.raises(ValueError, match="shape mismatch"):
        torch_export.vit_params_to_torch(params, "mu/16")  # 16 px patches: other kernel
    with pytest.raises(ValueError, match="missing"):
        torch_export.vit_params_to_torch({**params, "blocks_1": None}, "mu/8")
    half = jax.tree.map(lambda x: np.asarray(x, np.float16), params)
    with pytest.raises(ValueError, match="float32"):
        torch_export.vit_params_to_torch(half, "mu/8")
    with pytest.raises(ValueError, match="square"):
        torch_export.ref_image_size_of({"pos_embed": np.zeros((1, 1 + 12, 32))}, "mu/8")
    assert torch_export.ref_image_size_of(params, "mu/8") == 32


def test_timm_snippet():
    s8 = torch_export.timm_snippet("S/8", 224)
    assert 'timm.create_model("vit_small_patch8_224", pretrained=False, in_chans=1, ' in s8
    assert "num_classes=0, img_size=224)" in s8
    mu = torch_export.timm_snippet("mu/8", 224, "enc.safetensors")
    assert "patch_size=8, in_chans=1, num_classes=0, embed_dim=32, depth=2, num_heads=2" in mu
    assert 'load_state_dict(safetensors.torch.load_file("enc.safetensors"))' in mu
