"""tools/probe.py as a person runs it: the test intervals printed as ``0.82 [0.74, 0.88]``,
the progress line on stderr, and a re-run with another probe config refused in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from dinolg_jax.eval.metrics import format_interval
from dinolg_jax.models.vit import ViT
from dinolg_jax.phantom.synthetic_records import write_dataset
from dinolg_jax.runtime import checkpoint as ckpt_lib

ROOT = Path(__file__).resolve().parents[2]


def _probe(workdir, manifest, encoder, *overrides):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable, str(ROOT / "tools" / "probe.py"),
        f"--config={ROOT / 'configs' / 'probe.py'}:linear,runlocal", f"--workdir={workdir}",
        f"--config.encoder={encoder}", f"--config.data.manifest={manifest}",
        "--config.data.batch_size=8", "--config.features.n_last_blocks=2",
        "--config.features.token_pool=1", "--config.optim.epochs=3",
        "--config.optim.batch_size=12", "--config.patch_probe.enabled=False", *overrides,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


@pytest.mark.slow
def test_probe_tool_prints_the_intervals_and_refuses_another_config(tmp_path):
    manifest = write_dataset(tmp_path / "data", size=32, studies=3, slices_per_study=6)
    vit = ViT(variant="mu/8", ref_image_size=32, n_last_blocks=2)
    params = jax.jit(vit.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 32, 32, 1)))["params"]
    enc = ckpt_lib.save_encoder(
        tmp_path / "pre" / "encoder", params, {"variant": "mu/8", "ref_image_size": 32}
    )
    work = tmp_path / "probe"
    proc = _probe(work, manifest, enc.parent)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((work / "summary.json").read_text())
    auc, f1 = summary["test"]["intervals"]["roc_auc"], summary["test"]["intervals"]["f1"]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2] == (
        f"test ROC-AUC {format_interval(auc['value'], auc['ci95'])}, "
        f"F1 {format_interval(f1['value'], f1['ci95'])} "
        "(95 % intervals: 1000 bootstrap draws over 3 test patients)"
    )
    printed = json.loads(lines[-1])
    assert printed["test_ci95"]["roc_auc"] == format_interval(auc["value"], auc["ci95"])
    assert printed["test"]["roc_auc"] == auc["value"]
    # 18 rows in batches of 12: 2 steps an epoch, 6 in all
    assert "step 6/6 (100%)" in proc.stderr
    # the same workdir with another probe config: one line naming the key, nothing changed
    before = (work / "summary.json").read_text()
    proc = _probe(work, manifest, enc.parent, "--config.optim.lr=0.5")
    errors = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: ") and "differs in optim.lr" in errors[0]
    assert (work / "summary.json").read_text() == before
