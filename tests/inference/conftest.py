"""Fixtures shared by the inference tests: a tiny trained-format segmentation workdir."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common

SEG_SIZE = 16  # side (px) of the slices the tiny U-Net is initialised at


@pytest.fixture(scope="module")
def seg_workdir(tmp_path_factory):
    """A tiny U-Net checkpoint written the way train/segment.py writes it.

    Returns (workdir, config, model, state). Its config has no eval size and there is no
    training manifest, so studies of any (multiple of 4) slice size are scored as they are.
    """
    from dinolg_jax.runtime import checkpoint as ckpt_lib
    from dinolg_jax.train import segment

    config = common.segment_config("unet")
    config.model.kwargs = {"filters": 4, "depth": 2}
    workdir = tmp_path_factory.mktemp("seg")
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), default=str))
    model, _ = segment.build_model(config)
    tx = segment.segment_optimizer(config.optim, 10)

    # Host arrays from the init's shapes (nothing compiled): a quick, realistic save.
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(
        model.init, jax.random.PRNGKey(0), jnp.zeros((1, SEG_SIZE, SEG_SIZE, 1))
    )
    params = jax.tree.map(lambda a: 0.3 * rng.standard_normal(a.shape, np.float32), shapes)
    params = params["params"]
    opt = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(tx.init, params))
    state = segment.SegState(np.int32(7), params, opt)
    ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False)
    ckpt.save(7, state, None, config.to_dict())
    ckpt.close()
    return workdir, config, model, state
