"""Re-running a tool on a workdir it finished: no crash, the same result, nothing lost.

The pretraining tool (finished -> at once; extended -> encoder and summary move on) is
covered in ``train/pretrain_test.py``, segmentation in ``train/segment_test.py``, the
converter in ``data/convert_test.py``, an encoder export over an existing one
(``import_torch_dino.py``) in ``runtime/checkpoint_test.py``. Here: the probe, whose re-run
retrains from cached features and must give the same probe, threshold and export.
"""

import json

import jax
import jax.numpy as jnp
import pytest

from configs import common
from dinolg_jax.eval import probe
from dinolg_jax.models.vit import ViT
from dinolg_jax.phantom.synthetic_records import write_dataset
from dinolg_jax.runtime import checkpoint as ckpt_lib


@pytest.mark.slow
def test_probe_rerun_on_a_finished_workdir(tmp_path):
    manifest = write_dataset(tmp_path / "data", size=32, studies=2, slices_per_study=6)
    vit = ViT(variant="mu/8", ref_image_size=32, n_last_blocks=2)
    params = jax.jit(vit.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 32, 32, 1)))["params"]
    enc_cfg = {"variant": "mu/8", "ref_image_size": 32}
    enc = ckpt_lib.save_encoder(tmp_path / "pre" / "encoder", params, enc_cfg)
    c = common.probe_config("linear")
    c.encoder, c.data.manifest = str(enc), str(manifest)
    c.data.batch_size, c.features.n_last_blocks, c.features.token_pool = 8, 2, 1
    c.optim.epochs, c.optim.batch_size = 5, 12
    work = tmp_path / "probe"
    first = probe.run_probe(c, work)
    saved = (work / "probe" / "probe_config.json").read_text()
    again = probe.run_probe(c, work)
    keys = ("params_checksum", "threshold", "encoder_checksum", "test", "val")
    assert {k: again[k] for k in keys} == {k: first[k] for k in keys}
    assert (work / "probe" / "probe_config.json").read_text() == saved
    assert (
        json.loads((work / "summary.json").read_text())["params_checksum"]
        == (first["params_checksum"])
    )
    _, p, _ = probe.load_probe(work)
    assert ckpt_lib.params_checksum(p) == first["params_checksum"]
