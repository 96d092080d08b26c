"""A random crops-major batch with a pretraining config's shapes, for benchmarks and tests.

The input of the DINO step (`dino.step.make_train_step`) without data: no records, no
pipeline, standard normal values. `tools/bench_step.py` times the step on it; the step,
crop-codec and multi-host tests train on it.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from dinolg_jax.runtime import mesh as mesh_lib


def synthetic_batch(
    config: ml_collections.ConfigDict, mesh: Mesh, seed: int = 0
) -> Mapping[str, jax.Array]:
    """A random crops-major batch with the config's shapes, sharded on the mesh.

    For benchmarks and tests without data; the same on every process (each copies only
    its devices' slices). Values are standard normal, float32.

    Returns:
      ``{"global": [n_global, B, G, G, 1], "local": [n_local, B, L, L, 1]}``.
    """
    d = config.data
    rng = np.random.default_rng(seed)
    b = int(d.batch_size)
    n_local = int(d.n_local_random) + int(d.n_local_guided)
    g = rng.standard_normal((int(d.n_global), b, d.global_size, d.global_size, 1), np.float32)
    loc = rng.standard_normal((n_local, b, d.local_size, d.local_size, 1), np.float32)
    return {
        "global": mesh_lib.global_batch_from_numpy(g, mesh, batch_dim=1),
        "local": mesh_lib.global_batch_from_numpy(loc, mesh, batch_dim=1),
    }
