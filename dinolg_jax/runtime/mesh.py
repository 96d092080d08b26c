"""Device mesh, sharding rules and multi-process start-up.

The mesh has two named axes:

* ``data``: pure data parallelism (the batch is split, parameters replicated);
* ``fsdp``: fully sharded data parallelism. The batch is split over it too, and each
  large array of the train state (parameters, optimiser moments, teacher) has its
  largest dimension divisible by the axis size sharded over it; every other array is
  replicated. With ``fsdp = 1`` (the default) the mesh is plain data parallel.

The batch is always split over both axes, so every device sees ``global_batch /
n_devices`` images. Config (``config.mesh``)::

    data: int   # -1: all devices not used by fsdp
    fsdp: int   # 1: no parameter sharding
    fsdp_min_size: int  # arrays with fewer elements stay replicated

Multi-process: :func:`maybe_initialize_distributed` calls
``jax.distributed.initialize`` when the process was launched as one of several (explicit
arguments, the ``DINOLG_COORDINATOR`` / ``DINOLG_NUM_PROCESSES`` / ``DINOLG_PROCESS_ID``
environment variables, or a SLURM / Open MPI launch that JAX detects itself).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
AXES = (DATA_AXIS, FSDP_AXIS)
# The batch dimension is split over every device of the mesh.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (``data``, ``fsdp``) mesh over all (or the given) devices.

    Args:
      data: size of the data axis; -1 takes every device left after ``fsdp``.
      fsdp: size of the parameter-sharding axis (1 = replicated parameters).
      devices: devices to use; defaults to ``jax.devices()`` (all processes).

    Returns:
      A ``Mesh`` of shape [data, fsdp] with axis names ("data", "fsdp").

    Raises:
      ValueError: if the sizes do not multiply to the device count.
    """
    devs = list(jax.devices() if devices is None else devices)
    n = len(devs)
    if fsdp < 1:
        raise ValueError(f"mesh.fsdp must be >= 1, got {fsdp}")
    if data == -1:
        if n % fsdp:
            raise ValueError(f"{n} devices are not divisible by mesh.fsdp={fsdp}")
        data = n // fsdp
    if data < 1 or data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not match the {n} devices")
    # Devices sorted by process then id, so each process owns contiguous batch rows.
    devs.sort(key=lambda d: (d.process_index, d.id))
    grid = np.asarray(devs, dtype=object).reshape(data, fsdp)
    return Mesh(grid, AXES)


def mesh_from_config(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the mesh from ``config.mesh`` (fields ``data`` and ``fsdp``)."""
    return make_mesh(int(mesh_config.data), int(mesh_config.fsdp), devices)


def param_partition_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> PartitionSpec:
    """The FSDP rule for one array: shard its largest divisible dimension, else replicate.

    Args:
      shape: the array's shape.
      fsdp_size: size of the ``fsdp`` mesh axis.
      min_size: arrays with fewer elements than this stay replicated.

    Returns:
      A ``PartitionSpec`` naming ``"fsdp"`` on at most one dimension. Among dimensions
      divisible by ``fsdp_size``, the largest one is chosen (the first on ties).
    """
    spec: list[str | None] = [None] * len(shape)
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return PartitionSpec(*spec)
    candidates = [i for i, d in enumerate(shape) if d % fsdp_size == 0 and d >= fsdp_size]
    if not candidates:
        return PartitionSpec(*spec)
    best = max(candidates, key=lambda i: (shape[i], -i))
    spec[best] = FSDP_AXIS
    return PartitionSpec(*spec)


def state_shardings(mesh: Mesh, abstract_tree: Any, min_size: int = 2**18) -> Any:
    """NamedShardings for every leaf of an (abstract) train-state pytree.

    The rule depends only on each leaf's shape, so a parameter and its optimiser moments
    (same shape) always get the same sharding.

    Args:
      mesh: the (data, fsdp) mesh.
      abstract_tree: pytree of arrays or ``jax.ShapeDtypeStruct``.
      min_size: leaves with fewer elements are replicated.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``abstract_tree``.
    """
    fsdp_size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, param_partition_spec(x.shape, fsdp_size, min_size)),
        abstract_tree,
    )


def batch_sharding(
    mesh: Mesh, batch_dim: int = 0, axes: str | Sequence[str] = BATCH_AXES
) -> NamedSharding:
    """Sharding that splits dimension ``batch_dim`` over the ``axes`` of the mesh.

    Args:
      mesh: the (data, fsdp) mesh.
      batch_dim: which dimension is the batch (1 for crops-major [n_crops, B, ...]);
        the other dimensions are replicated.
      axes: the mesh axes the batch is split over (default: all of them).
    """
    axes = axes if isinstance(axes, str) else tuple(axes)
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_dim), axes))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def global_batch_from_numpy(
    array: np.ndarray, mesh: Mesh, batch_dim: int = 0, global_shape: Sequence[int] | None = None
) -> jax.Array:
    """Builds a batch-sharded global ``jax.Array`` from the full array known on every host.

    Each process only copies the slices its own devices hold, so this works the same in
    one process and in several (used by tests and benchmarks with synthetic data).

    Args:
      array: the full global array (identical on every process).
      mesh: the (data, fsdp) mesh.
      batch_dim: the batch dimension of ``array``.
      global_shape: defaults to ``array.shape``.
    """
    shape = tuple(array.shape if global_shape is None else global_shape)
    sharding = batch_sharding(mesh, batch_dim)
    return jax.make_array_from_callback(shape, sharding, lambda idx: array[idx])


def put_batch(
    batch: Mapping[str, Any],
    mesh: Mesh,
    *,
    batch_dims: Mapping[str, int | None] | None = None,
    axes: str | Sequence[str] = BATCH_AXES,
) -> dict[str, Any]:
    """Host to device: this process's rows of a host batch -> global ``jax.Array`` s.

    The one placement of input batches (the input pipeline, segmentation training and
    evaluation). Each process passes its own rows (``jax.make_array_from_process_local_data``;
    :func:`make_mesh` orders devices by process, so a process's rows are contiguous), and
    the global batch is the processes' rows concatenated.

    Args:
      batch: arrays by key; string arrays stay host numpy arrays.
      mesh: the (data, fsdp) mesh.
      batch_dims: the batch dimension of a key (default 0); ``None`` replicates the array
        (every process passes the whole of it).
      axes: the mesh axes the batch is split over.

    Returns:
      The same keys: ``jax.Array`` s split over ``axes`` on their batch dimension.
    """
    batch_dims = batch_dims or {}
    out: dict[str, Any] = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "USO":
            out[key] = value
            continue
        dim = batch_dims.get(key, 0)
        shape = list(value.shape)
        if dim is None:
            sharding = replicated(mesh)
        else:
            sharding = batch_sharding(mesh, dim, axes)
            shape[dim] *= jax.process_count()
        out[key] = jax.make_array_from_process_local_data(sharding, value, tuple(shape))
    return out


_ENV_COORD = "DINOLG_COORDINATOR"
_ENV_NPROC = "DINOLG_NUM_PROCESSES"
_ENV_PID = "DINOLG_PROCESS_ID"


def define_distributed_flags() -> Callable[[], bool]:
    """Defines a tool's ``--coordinator_address``, ``--num_processes`` and ``--process_id``.

    Returns:
      A function to call at the start of ``main`` (before any JAX call that touches
      devices): :func:`maybe_initialize_distributed` with those flags' values.
    """
    from absl import flags

    coord = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
    nproc = flags.DEFINE_integer("num_processes", None, "Number of processes.")
    pid = flags.DEFINE_integer("process_id", None, "This process's index.")
    return lambda: maybe_initialize_distributed(coord.value, nproc.value, pid.value)


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Calls ``jax.distributed.initialize`` when this is one of several processes.

    Must run before any other JAX call that touches devices. Explicit arguments win over
    the ``DINOLG_*`` environment variables; without either, a SLURM or Open MPI launch
    with more than one task is handed to JAX's own cluster detection. On CPU the
    cross-process collectives use gloo.

    Returns:
      True if the distributed runtime was initialised here.
    """
    coordinator_address = coordinator_address or os.environ.get(_ENV_COORD)
    if num_processes is None and os.environ.get(_ENV_NPROC):
        num_processes = int(os.environ[_ENV_NPROC])
    if process_id is None and os.environ.get(_ENV_PID):
        process_id = int(os.environ[_ENV_PID])
    if coordinator_address is not None:
        if num_processes is None or process_id is None:
            raise ValueError(
                "a coordinator address needs num_processes and process_id "
                f"(flags or {_ENV_NPROC} / {_ENV_PID})"
            )
        if num_processes <= 1:
            return False
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        return True
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    mpi_tasks = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    if slurm_tasks > 1 or mpi_tasks > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize()
        return True
    return False
