"""Tests for runtime/checkpoint.py: checksum, state + data round trip, encoder export."""

import hashlib
import json
import shutil

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


def _tiny_run(folder, steps=(1, 2, 3)):
    """Saves a small sharded state at `steps` (state scaled by the step); returns its parts."""
    mesh = mesh_lib.make_mesh(fsdp=2)
    params = {"w": jnp.arange(64.0).reshape(8, 8), "b": jnp.ones(3)}
    tx = optax.adam(1e-3)
    base = _State(jnp.asarray(0, jnp.int32), params, tx.init(params))
    shardings = mesh_lib.state_shardings(mesh, base, min_size=16)
    states = {}
    ckpt = ckpt_lib.Checkpointer(folder, max_to_keep=5, async_save=False)
    for s in steps:
        state = jax.device_put(
            base.replace(
                step=jnp.asarray(s, jnp.int32), params={k: v * s for k, v in params.items()}
            ),
            shardings,
        )
        ckpt.save(s, state, {"pos": s}, {"seed": 0})
        states[s] = ckpt_lib.params_checksum(state)
    ckpt.close()
    abstract = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), base, shardings
    )
    return states, abstract


def _flip(path, offset=None):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_anywhere_in_the_newest_step_never_resumes_corrupt_state(tmp_path, caplog):
    """One flipped bit in each file of step 3 in turn: what is restored is always bitwise a
    state that was saved, and when it is not step 3 the warning names step 3."""
    pristine = tmp_path / "pristine"
    saved, abstract = _tiny_run(pristine)
    files = sorted(p.relative_to(pristine) for p in (pristine / "3").rglob("*") if p.is_file())
    assert len(files) >= 10
    outcomes = {}
    for k, rel in enumerate(files):
        folder = tmp_path / f"run{k}" / "checkpoints"
        shutil.copytree(pristine, folder)
        _flip(folder / rel)
        caplog.clear()
        ckpt = ckpt_lib.Checkpointer(folder)
        try:
            state, data_state, _ = ckpt.restore(None, abstract)
        finally:
            ckpt.close()
        step = ckpt.restored_step
        assert ckpt_lib.params_checksum(state) == saved[step], rel
        assert data_state == {"pos": step} and int(state.step) == step
        if step != 3:
            assert any("checkpoints/3 is unusable" in r.getMessage() for r in caplog.records)
            assert (folder.parent / "checkpoints_corrupt" / "3").is_dir()
            again = ckpt_lib.Checkpointer(folder)
            assert again.all_steps() == [1, 2]
            again.close()
        outcomes[str(rel)] = step
    # Every flip in the array data, the data state, the config or the checksum itself is
    # caught (other files are not read back, or a flip there changes nothing restored).
    caught = [r for r, step in outcomes.items() if step == 2]
    must = ("3/state/d/", "3/state/manifest.ocdbt", "3/data/metadata", "3/config/metadata",
            "3/checksum/metadata")  # fmt: skip
    assert all(any(r.startswith(m) for r in caught) for m in must), outcomes


def _never():
    pytest.fail("initialised a fresh state over an existing run")


def test_no_good_step_is_an_error_never_a_fresh_start(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    saved, abstract = _tiny_run(folder, steps=(1, 2))
    stored = ckpt_lib.stored_checksums(folder, 2)
    assert stored["state"] == saved[2]
    want = {
        "w": np.arange(64.0, dtype=np.float32).reshape(8, 8) * 2,
        "b": np.full(3, 2.0, np.float32),
    }
    assert stored["params"] == ckpt_lib.params_checksum(want)  # for params-only readers
    for s in (1, 2):
        _flip(folder / str(s) / "data" / "metadata", offset=3)
    ckpt = ckpt_lib.Checkpointer(folder)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"no usable checkpoint.*step 2: .*step 1:"):
        ckpt_lib.restore_or_init(
            ckpt, abstract, lambda: pytest.fail("initialised"), tmp_path / "run"
        )
    ckpt.close()
    # A finished run whose checkpoints are gone is not silently restarted either.
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}")
    empty = ckpt_lib.Checkpointer(tmp_path / "done" / "checkpoints")
    with pytest.raises(ckpt_lib.CheckpointError, match="holds a run"):
        ckpt_lib.restore_or_init(
            empty, abstract, lambda: pytest.fail("initialised"), tmp_path / "done"
        )
    fresh = ckpt_lib.Checkpointer(tmp_path / "new" / "checkpoints")
    assert ckpt_lib.restore_or_init(fresh, abstract, lambda: "init", tmp_path / "new") == (
        "init",
        None,
    )
    empty.close()
    fresh.close()


def test_encoder_export_replaces_whole_and_detects_damage(tmp_path):
    where = tmp_path / "run" / "encoder"
    first = {"blocks_0": {"w": np.ones((3, 4), np.float32)}}
    second = {"blocks_0": {"w": np.full((3, 4), 2.0, np.float32)}}
    ckpt_lib.save_encoder(where, first, {"variant": "mu/8"}, step=10)
    ckpt_lib.save_encoder(where, second, {"variant": "mu/8"}, step=20)  # a re-run / extension
    loaded, _ = ckpt_lib.load_encoder(where)
    np.testing.assert_array_equal(loaded["blocks_0"]["w"], second["blocks_0"]["w"])
    export = json.loads((where / "export.json").read_text())
    assert export == {"params_checksum": ckpt_lib.params_checksum(second), "step": 20}
    assert sorted(p.name for p in where.parent.iterdir()) == ["encoder"]  # no staging left
    # One flipped bit in each file in turn: the export loads bitwise as saved, or fails
    # with an error naming it; never other weights.
    files = sorted(p for p in where.rglob("*") if p.is_file())
    failures = 0
    for path in files:
        good = path.read_bytes()
        _flip(path)
        try:
            loaded, _ = ckpt_lib.load_encoder(where)
            assert ckpt_lib.params_checksum(loaded) == export["params_checksum"], path
        except ckpt_lib.CheckpointError as e:
            assert f"encoder export {where}" in str(e)
            failures += 1
        path.write_bytes(good)
    assert failures >= 3
