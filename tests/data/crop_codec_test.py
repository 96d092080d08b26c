"""uint16 crops: the fixed-point code, OpenCV's encoding pass, and a DINO step fed with them."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from dinolg_jax.data import crop_codec, resample
from dinolg_jax.dino import step as step_lib
from dinolg_jax.phantom.synthetic_crops import synthetic_batch
from dinolg_jax.runtime import mesh as mesh_lib

HALF_STEP = crop_codec.UINT16_STEP / 2


def test_code_round_trip_saturation_and_exact_decode():
    x = np.linspace(-4.0, 4.0 - crop_codec.UINT16_STEP, 200001)
    q = crop_codec.encode(x, "uint16")
    assert q.dtype == np.uint16
    back = crop_codec.decode(q)
    assert back.dtype == np.float32
    assert np.abs(back - x).max() <= HALF_STEP + 1e-12
    # Decoding is exact in float32: q * 2^-13 - 4 has at most 16 significant bits.
    np.testing.assert_array_equal(back, q.astype(np.float64) * crop_codec.UINT16_STEP - 4.0)
    np.testing.assert_array_equal(crop_codec.encode([-5.0, 4.5], "uint16"), [0, 65535])
    f = np.float32([0.25, -1.0])
    assert crop_codec.decode(f) is f and crop_codec.encode(f, "float32").dtype == np.float32
    with pytest.raises(ValueError, match="crop dtype"):
        crop_codec.check_dtype("bfloat16")
    # The device decode is the host decode.
    np.testing.assert_array_equal(np.asarray(crop_codec.decode(jnp.asarray(q))), back)


def test_render_crops_writes_uint16_in_its_finishing_pass():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1000, 1000, size=(80, 90)).astype(np.float32)
    boxes = [[0, 0, 80, 90], [5, 7, 30, 41], [50, 60, 30, 30]]
    flips = [[False, True], [True, True], [False, False]]
    sigmas, radii = [1.3, 0.0, 0.6], [4, 0, 2]
    table = rng.standard_normal(4096).astype(np.float32)
    args = (image, boxes, flips, sigmas, radii, 1e-3, [0.1, -0.05, 0.0], [0.02, 0.0, 0.5],
            [3, 0, 1000], table)  # fmt: skip
    # Crops-major batch slots: out[:, b, :, :, 0] is not contiguous across crops.
    f32 = np.zeros((3, 2, 24, 24, 1), np.float32)
    u16 = np.zeros((3, 2, 24, 24, 1), np.uint16)
    resample.render_crops(f32[:, 1, :, :, 0], *args)
    resample.render_crops(u16[:, 1, :, :, 0], *args)
    assert not f32[:, 0].any() and not u16[:, 0].any()
    # Rounded from float32 in OpenCV, from float64 in the reference: one step at most.
    diff = u16[:, 1].astype(np.int64) - crop_codec.encode(f32[:, 1], "uint16").astype(np.int64)
    assert np.abs(diff).max() <= 1
    assert np.abs(crop_codec.decode(u16[:, 1]) - f32[:, 1]).max() <= HALF_STEP + 1e-6


def _config(dtype):
    c = common.pretrain_config()
    c.model.variant = "mu/8"
    c.model.dtype = dtype
    c.model.attention_impl = "xla"
    c.model.drop_path_rate = 0.0
    c.dino.out_dim, c.dino.hidden_dim, c.dino.bottleneck_dim = 32, 16, 8
    c.num_epochs = 1.0
    c.data.batch_size = 8
    c.data.global_size, c.data.local_size = 16, 8
    c.data.n_local_random, c.data.n_local_guided = 2, 0
    return c


@pytest.mark.slow
def test_pretraining_step_takes_uint16_crops():
    # float32 compute (the cheaper compile on CPU): the difference is the code's alone.
    config = _config("float32")
    mesh = mesh_lib.make_mesh()
    trainer = step_lib.make_trainer(config, mesh, steps_per_epoch=10)
    batch = synthetic_batch(config, mesh, seed=3)
    host = {k: np.clip(np.asarray(v), -3.0, 3.0) for k, v in batch.items()}
    results = []
    for crops in (host, {k: crop_codec.encode(v, "uint16") for k, v in host.items()}):
        on_mesh = {
            k: mesh_lib.global_batch_from_numpy(v, mesh, batch_dim=1) for k, v in crops.items()
        }
        state, metrics = trainer.step(
            trainer.init_state(), on_mesh, trainer.step_key, jnp.int32(-1)
        )
        results.append((jax.device_get(metrics), jax.device_get(state.params)))
    (m32, p32), (m16, p16) = results
    # The code's error (<= 6.1e-5) is far inside one bfloat16 rounding (2^-8 relative).
    bf16 = 2.0**-8
    assert m16["loss"] == pytest.approx(m32["loss"], rel=bf16)
    assert m16["grad_norm"] == pytest.approx(m32["grad_norm"], rel=8 * bf16)
    for a, b in zip(jax.tree.leaves(p16), jax.tree.leaves(p32), strict=True):
        np.testing.assert_allclose(a, b, rtol=bf16, atol=bf16 * float(np.abs(b).max()))


def test_the_step_and_bench_step_do_not_need_opencv():
    # tools/bench_step.py (the GPU check) imports dino.step; the GPU machine may have
    # no OpenCV wheel, so decoding crops must not pull it in.
    code = "import sys, dinolg_jax.dino.step; assert 'cv2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
