"""Times the jitted DINO training step on synthetic batches; prints one JSON line.

    python tools/bench_step.py --config configs/dinolg.py --config.data.batch_size=32 \
        --peak_tflops=790
    python tools/bench_step.py --config configs/dinolg.py:runlocal   # CPU sanity run

Model FLOPs of one step, per image (as the peer benchmark counts them, not in this repository,
so the MFUs compare): a ViT forward on ``n`` tokens (CLS included) of width ``D``,
depth ``L``, patch ``p``, ``C`` channels costs

    F(n) = L (24 n D^2 + 4 n^2 D) + 2 (n - 1) p^2 C D

(matmuls only: qkv 6nD^2, proj 2nD^2, MLP 16nD^2, scores and weighted sum 4n^2 D, patch
embedding); the student runs forward + backward (3 F) on every crop, the teacher forward
on the global crops:  ``3 (n_g F(n_G) + n_l F(n_L)) + n_g F(n_G)``. The DINO head is left
out of ``mfu`` as the peer does; ``mfu_with_head`` adds it (3 layers + prototypes,
``2 (D h + h^2 + h b + b K)`` per crop forward, same 3x / 1x rule). MFU = model FLOPs
per second / (``--peak_tflops`` x 1e12 x devices); without ``--peak_tflops`` it is null.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dinolg_jax.dino import step as step_lib
from dinolg_jax.models.vit import decode_variant
from dinolg_jax.phantom.synthetic_crops import synthetic_batch
from dinolg_jax.runtime import cli
from dinolg_jax.runtime import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pretraining config file.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s of one device (for mfu).")
flags.mark_flags_as_required(["config"])


def vit_forward_flops(n_tokens: int, width: int, depth: int, patch: int, chans: int = 1) -> float:
    """Matmul FLOPs of one ViT forward (module docstring)."""
    per_block = 24 * n_tokens * width**2 + 4 * n_tokens**2 * width
    return depth * per_block + 2 * (n_tokens - 1) * patch**2 * chans * width


def step_flops_per_image(config) -> tuple[float, float]:
    """(backbone-only, head-only) model FLOPs of one DINO step per image."""
    spec = decode_variant(config.model.variant)
    d = config.data
    n_global, n_local = int(d.n_global), int(d.n_local_random) + int(d.n_local_guided)
    tok_g = (d.global_size // spec.patch) ** 2 + 1
    tok_l = (d.local_size // spec.patch) ** 2 + 1
    f = lambda n: vit_forward_flops(n, spec.width, spec.depth, spec.patch)
    backbone = 3 * (n_global * f(tok_g) + n_local * f(tok_l)) + n_global * f(tok_g)
    h, b, k = config.dino.hidden_dim, config.dino.bottleneck_dim, config.dino.out_dim
    head_fwd = 2 * (spec.width * h + h * h + h * b + b * k)
    head = 3 * (n_global + n_local) * head_fwd + n_global * head_fwd
    return float(backbone), float(head)


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    config = _CONFIG.value
    mesh = mesh_lib.mesh_from_config(config.mesh)
    trainer = step_lib.make_trainer(config, mesh, steps_per_epoch=1000)
    state = trainer.init_state()
    batch = synthetic_batch(config, mesh)
    nan_at = jax.device_put(jnp.asarray(-1, jnp.int32), mesh_lib.replicated(mesh))
    t0 = time.perf_counter()
    step = trainer.step.lower(state, batch, trainer.step_key, nan_at).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(_WARMUP.value):
        state, metrics = step(state, batch, trainer.step_key, nan_at)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = step(state, batch, trainer.step_key, nan_at)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - t0) / _STEPS.value
    batch_size = int(config.data.batch_size)
    img_per_s = batch_size / seconds
    backbone, head = step_flops_per_image(config)
    peak = None if _PEAK.value is None else _PEAK.value * 1e12 * mesh.size
    result = {
        "variant": config.model.variant,
        "platform": jax.devices()[0].platform,
        "devices": mesh.size,
        "batch": batch_size,
        "crops": [
            int(config.data.n_global),
            int(config.data.n_local_random + config.data.n_local_guided),
        ],
        "compile_s": round(compile_s, 2),
        "ms_per_step": round(seconds * 1e3, 3),
        "img_per_s": round(img_per_s, 2),
        "tflop_per_img": float(f"{backbone / 1e12:.4g}"),
        "head_tflop_per_img": float(f"{head / 1e12:.4g}"),
        "mfu": None if peak is None else round(backbone * img_per_s / peak, 4),
        "mfu_with_head": None if peak is None else round((backbone + head) * img_per_s / peak, 4),
        "loss": float(metrics["loss"]),
        "finite": bool(np.isfinite(float(metrics["loss"]))),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
