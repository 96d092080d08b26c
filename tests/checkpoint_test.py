"""Tests for runtime/checkpoint.py: checksum, state + data round trip, encoder export."""

import hashlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dinolg_jax.runtime import checkpoint as ckpt_lib
from dinolg_jax.runtime import mesh as mesh_lib


def _reference_checksum(leaves: list[tuple[str, np.ndarray]]) -> str:
    """Independent statement of the documented checksum: sorted paths, header + bytes."""
    h = hashlib.sha256()
    for path, arr in sorted(leaves):
        h.update(f"{path}|{arr.dtype.name}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def test_params_checksum_matches_reference_and_ignores_sharding():
    w = np.arange(32, dtype=np.float32).reshape(4, 8)
    b = np.array([1.5, -2.0], np.float32)
    tree = {"z": {"w": w}, "a": {"b": b}}
    expected = _reference_checksum([("['a']['b']", b), ("['z']['w']", w)])
    assert ckpt_lib.params_checksum(tree) == expected
    sharded = jax.device_put(w, mesh_lib.state_shardings(mesh_lib.make_mesh(fsdp=4), w, 1))
    assert ckpt_lib.params_checksum({"z": {"w": sharded}, "a": {"b": jnp.asarray(b)}}) == expected
    # one flipped bit, a dtype change and a renamed leaf all change it
    w2 = w.copy()
    w2.view(np.uint32)[0, 0] ^= 1
    assert ckpt_lib.params_checksum({"z": {"w": w2}, "a": {"b": b}}) != expected
    assert ckpt_lib.params_checksum({"z": {"w": w.astype(np.float64)}, "a": {"b": b}}) != expected
    assert ckpt_lib.params_checksum({"y": {"w": w}, "a": {"b": b}}) != expected


@flax.struct.dataclass
class _State:
    step: jax.Array
    params: dict
    opt_state: optax.OptState


def test_checkpointer_round_trip_keeps_last_k(tmp_path):
    mesh = mesh_lib.make_mesh(fsdp=2)
    params = {"w": jnp.arange(64.0).reshape(8, 8), "b": jnp.ones(3)}
    tx = optax.adam(1e-3)
    state = _State(jnp.asarray(5, jnp.int32), params, tx.init(params))
    shardings = mesh_lib.state_shardings(mesh, state, min_size=16)
    state = jax.device_put(state, shardings)
    ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    ckpt.save(1, state, b"\x00\xffraw", {"seed": 1})
    ckpt.save(2, state, {"pos": [3, 4]}, {"seed": 2})
    ckpt.save(3, state, None, {"seed": 3})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    assert ckpt.latest_step() == 3
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
    restored, data_state, config = ckpt.restore(2, abstract)
    assert data_state == {"pos": [3, 4]}
    assert config == {"seed": 2}
    assert restored.params["w"].sharding.spec == shardings.params["w"].spec
    assert ckpt_lib.params_checksum(restored) == ckpt_lib.params_checksum(state)
    ckpt.close()
    # a fresh manager on the same folder sees the same steps (resume)
    again = ckpt_lib.Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    assert again.latest_step() == 3
    again.close()


def test_data_state_encoding_round_trip():
    for value in (None, b"\x00\x01bytes", {"a": 1, "b": [1, 2]}):
        assert ckpt_lib.decode_data_state(ckpt_lib.encode_data_state(value)) == value
    with pytest.raises(TypeError):
        ckpt_lib.encode_data_state({"a": object()})
    with pytest.raises(ValueError, match="unknown"):
        ckpt_lib.decode_data_state({"kind": "pickle"})


def test_encoder_export_round_trip(tmp_path):
    params = {"blocks_0": {"w": np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)}}
    ckpt_lib.save_encoder(tmp_path / "run" / "encoder", params, {"variant": "mu/8"})
    for where in (tmp_path / "run" / "encoder", tmp_path / "run"):
        loaded, model_config = ckpt_lib.load_encoder(where)
        assert model_config == {"variant": "mu/8"}
        assert isinstance(loaded["blocks_0"]["w"], np.ndarray)
        np.testing.assert_array_equal(loaded["blocks_0"]["w"], params["blocks_0"]["w"])
    with pytest.raises(FileNotFoundError, match="no encoder"):
        ckpt_lib.load_encoder(tmp_path)
    with pytest.raises(ValueError, match="variant"):
        ckpt_lib.save_encoder(tmp_path / "x", params, {})
