"""Tests for runtime/mesh.py: mesh shapes, the FSDP rule, batch placement."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dinolg_jax.runtime import mesh as mesh_lib


def test_make_mesh_shapes_and_errors():
    m = mesh_lib.make_mesh()
    assert dict(m.shape) == {"data": 8, "fsdp": 1}
    m = mesh_lib.make_mesh(data=-1, fsdp=2)
    assert dict(m.shape) == {"data": 4, "fsdp": 2}
    # devices are laid out row-major by id: device (i, j) is id 2 i + j
    assert [[d.id for d in row] for row in m.devices] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="does not match"):
        mesh_lib.make_mesh(data=3, fsdp=2)
    with pytest.raises(ValueError, match="not divisible"):
        mesh_lib.make_mesh(fsdp=3)
    with pytest.raises(ValueError, match=">= 1"):
        mesh_lib.make_mesh(fsdp=0)


@pytest.mark.parametrize(
    ("shape", "fsdp", "min_size", "expected"),
    [
        ((768, 3072), 4, 1, P(None, "fsdp")),  # the largest dim
        ((3072, 768), 4, 1, P("fsdp", None)),
        ((768, 768), 4, 1, P("fsdp", None)),  # tie: the first
        ((6, 10), 4, 1, P(None, None)),  # nothing divisible: replicated
        ((12, 10), 4, 1, P("fsdp", None)),  # only the divisible dim
        ((768, 3072), 4, 10**7, P(None, None)),  # small: replicated
        ((768, 3072), 1, 1, P(None, None)),  # no fsdp axis
        ((), 4, 0, P()),  # scalars
        ((2, 8), 8, 1, P(None, "fsdp")),
    ],
)
def test_param_partition_spec(shape, fsdp, min_size, expected):
    assert mesh_lib.param_partition_spec(shape, fsdp, min_size) == expected


def test_state_shardings_place_big_arrays_only():
    m = mesh_lib.make_mesh(fsdp=4)
    tree = {"w": np.zeros((16, 64), np.float32), "b": np.zeros((64,), np.float32)}
    sh = mesh_lib.state_shardings(m, tree, min_size=256)
    assert sh["w"].spec == P(None, "fsdp")
    assert sh["b"].spec == P(None)
    placed = jax.device_put(tree["w"], sh["w"])
    # each of the 4 fsdp columns holds 16 of the 64 columns, replicated over data rows
    assert {s.data.shape for s in placed.addressable_shards} == {(16, 16)}


def test_global_batch_from_numpy_splits_batch_over_all_devices():
    m = mesh_lib.make_mesh(fsdp=2)
    x = np.arange(3 * 16 * 2, dtype=np.float32).reshape(3, 16, 2)  # crops-major [n, B, F]
    arr = mesh_lib.global_batch_from_numpy(x, m, batch_dim=1)
    np.testing.assert_array_equal(np.asarray(arr), x)
    for shard in arr.addressable_shards:
        # device with id k holds batch rows 2k, 2k+1 of every crop
        k = shard.device.id
        np.testing.assert_array_equal(np.asarray(shard.data), x[:, 2 * k : 2 * k + 2])


def test_put_batch_splits_each_key_on_its_batch_dim():
    m = mesh_lib.make_mesh(fsdp=2)
    crops = np.arange(2 * 16 * 3, dtype=np.float32).reshape(2, 16, 3)  # [n_crops, B, F]
    rows = np.arange(16, dtype=np.int32)
    mask = np.ones((2, 4), bool)
    names = np.array(["a"] * 16)
    batch = {"crops": crops, "rows": rows, "mask": mask, "names": names}
    out = mesh_lib.put_batch(batch, m, batch_dims={"crops": 1, "mask": None})
    assert out["crops"].sharding.spec == P(None, ("data", "fsdp"))
    assert out["rows"].sharding.spec == P(("data", "fsdp"))
    assert out["mask"].sharding.is_fully_replicated
    assert isinstance(out["names"], np.ndarray)
    for key in ("crops", "rows", "mask"):
        np.testing.assert_array_equal(np.asarray(out[key]), batch[key])
    for shard in out["rows"].addressable_shards:
        k = shard.device.id
        np.testing.assert_array_equal(np.asarray(shard.data), rows[2 * k : 2 * k + 2])


def test_maybe_initialize_distributed_single_process(monkeypatch):
    for var in ("DINOLG_COORDINATOR", "DINOLG_NUM_PROCESSES", "DINOLG_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE", raising=False)
    assert mesh_lib.maybe_initialize_distributed() is False
    assert mesh_lib.maybe_initialize_distributed("localhost:1", 1, 0) is False
    with pytest.raises(ValueError, match="num_processes"):
        mesh_lib.maybe_initialize_distributed("localhost:1")
