"""The DINO step gives the same numbers however it is distributed.

One 8-device reference run (mesh data 4 x fsdp 2, so parameters are really FSDP-sharded)
in the pytest process is compared with
1. the same steps on a single device (allclose, tight tolerance), and
2. two CPU processes x 4 devices joined by ``jax.distributed`` (gloo collectives): the
   test starts this file twice as a worker (``python multihost_test.py --worker PORT
   ID OUT``) on a free localhost port; each worker goes through
   ``runtime.mesh.maybe_initialize_distributed``, builds the same global mesh, state and
   synthetic batches, and process 0 writes the losses and the gathered state.
The workers start first and run while the pytest process computes its two runs.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker
import pytest

# The module fixture runs both distributions (two processes, ~1 min): both tests are slow.
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve()
N_STEPS = 2
# Cheap XLA:CPU code generation: compiles 2-3x faster; every compared run uses it.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _config():
    spec = importlib.util.spec_from_file_location(
        "dinolg_config", HERE.parents[2] / "configs" / "dinolg.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.mesh.fsdp_min_size = 1024  # shard the bigger head / MLP kernels
    return config


def run(n_steps: int, data: int = 4, fsdp: int = 2, one_device: bool = False) -> dict:
    """``n_steps`` of the real jitted step on synthetic batches over every process.

    Returns:
      ``losses``, ``devices`` and ``state``: {key path: numpy array} of the student,
      teacher and center after the steps (gathered from all processes).
    """
    import jax
    from jax.experimental import multihost_utils

    from dinolg_jax.dino import step as step_lib
    from dinolg_jax.phantom.synthetic_crops import synthetic_batch
    from dinolg_jax.runtime import mesh as mesh_lib

    config = _config()
    devices = jax.devices()[:1] if one_device else None
    mesh = mesh_lib.make_mesh(data, fsdp, devices)
    trainer = step_lib.make_trainer(config, mesh, steps_per_epoch=4)
    init = jax.jit(trainer.init_fn, out_shardings=trainer.shardings)
    key = jax.device_put(trainer.init_key, mesh_lib.replicated(mesh))
    state = init.lower(key).compile(FAST_COMPILE)(key)
    nan_at = jax.device_put(np.int32(-1), mesh_lib.replicated(mesh))
    batches = [synthetic_batch(config, mesh, seed=i) for i in range(n_steps)]
    step = trainer.step.lower(state, batches[0], trainer.step_key, nan_at).compile(FAST_COMPILE)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch, trainer.step_key, nan_at)
        losses.append(float(metrics["loss"]))
    kernel = state.params["head"]["last_layer"]["kernel"]  # [16, 256]
    sharded = kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    tree = {"params": state.params, "teacher": state.teacher, "center": state.center}
    gathered = multihost_utils.process_allgather(tree, tiled=True)
    flat = {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(gathered)[0]
    }
    return {"losses": losses, "devices": mesh.size, "fsdp_sharded": sharded, "state": flat}


def _worker(port: int, process_id: int, out: str) -> None:
    from dinolg_jax.runtime import mesh as mesh_lib

    assert mesh_lib.maybe_initialize_distributed(f"localhost:{port}", 2, process_id)
    import jax

    assert jax.process_count() == 2 and jax.local_device_count() == 4
    result = run(N_STEPS)
    if process_id == 0:
        np.savez(out + ".npz", **result.pop("state"))
        Path(out).write_text(json.dumps(result))
    jax.distributed.shutdown()


def _assert_states_close(a: dict, b: dict, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """allclose on every array, except the key bias of the attention (see below)."""
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("['attn']['qkv']['bias']"):
            # The key bias adds q.b_k to every logit of a query row: softmax ignores it, so
            # its gradient is exactly 0 and what the runs compute is reduction-order noise,
            # which Adam's first steps (g / (|g| + eps)) turn into +-lr-sized moves. Both
            # runs must keep it within the size of the real (query, value) bias moves; the
            # query and value parts are compared as usual.
            d = x.shape[-1] // 3
            qv = np.concatenate([x[..., :d], x[..., 2 * d :]], -1)
            for z in (x, y):
                assert np.abs(z[..., d : 2 * d]).max() <= 2 * np.abs(qv).max(), name
            x = np.concatenate([x[..., :d], x[..., 2 * d :]], -1)
            y = np.concatenate([y[..., :d], y[..., 2 * d :]], -1)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts the 2 x 4 workers, then computes the 8-device and 1-device runs here."""
    out = tmp_path_factory.mktemp("multihost") / "result.json"
    port = portpicker.pick_unused_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=4 {FAST_COMPILE_FLAGS}"
    env["JAX_PLATFORMS"] = "cpu"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE), "--worker", str(port), str(i), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        yield {"eight": run(N_STEPS), "one": run(N_STEPS, 1, 1, one_device=True)}, procs, out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_sharded_step_equals_single_device_step(runs):
    results, _, _ = runs
    eight, one = results["eight"], results["one"]
    assert eight["devices"] == 8 and one["devices"] == 1
    assert eight["fsdp_sharded"]  # the FSDP rule really sharded the head's last layer
    assert np.isfinite(one["losses"]).all() and one["losses"][0] != one["losses"][1]
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=2e-6)
    _assert_states_close(eight["state"], one["state"])


@pytest.mark.slow
def test_two_processes_match_one_process(runs):
    results, procs, out = runs
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"multi-process worker timed out\n{p.communicate()[0][-3000:]}")
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    result = json.loads(out.read_text())
    reference = results["eight"]
    assert result["devices"] == 8 and result["fsdp_sharded"]
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-6)
    # not bitwise: gloo's cross-process all-reduce sums in another order
    with np.load(f"{out}.npz") as state:
        _assert_states_close(dict(state), reference["state"])


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    _worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
