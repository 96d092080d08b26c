"""The tools as a new user meets them: each mistake ends in one ``error:`` line.

Every case runs the real tool in a subprocess and checks the exit status (2 usage, 1 data),
that stderr is exactly one line naming what is wrong and what to do, and, for the
model-loading tools, that it came before any model loaded (fake workdirs: only their
files are looked at). Plus the logging policy: library INFO/WARNING lines (Orbax's) are
dropped unless ``--verbosity`` is given; the project's own lines stay.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dinolg_jax.runtime import cli, workdirs

ROOT = Path(__file__).resolve().parents[2]


def _tool(*args, timeout=120):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def _one_error(proc, code: int) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture()
def fake_workdirs(tmp_path):
    """A probe and a segmentation workdir as their runs lay them out (no real models)."""
    probe = tmp_path / "probe_run"
    (probe / "probe").mkdir(parents=True)
    (probe / "probe" / "probe_config.json").write_text("{}")
    seg = tmp_path / "seg_run"
    (seg / "checkpoints").mkdir(parents=True)
    (seg / "config.json").write_text(json.dumps({"model": {"name": "unet"}, "loss": {}}))
    return probe, seg


def test_workdir_kinds(fake_workdirs, tmp_path):
    probe, seg = fake_workdirs
    assert workdirs.kinds_of(probe) == ["probe"] and workdirs.kinds_of(seg) == ["segment"]
    with pytest.raises(cli.UsageError, match="is a segment workdir, not a probe workdir"):
        workdirs.require(seg, "probe", "--x")
    with pytest.raises(cli.UsageError, match=r"holds no pretrain run: train it first"):
        workdirs.require(tmp_path, "pretrain", "--x")


@pytest.mark.slow
def test_wrong_paths_are_usage_errors(tmp_path):
    line = _one_error(
        _tool(ROOT / "tools/convert_coca.py", "--release=/no/such/release", f"--out={tmp_path}"), 2
    )
    assert "--release=/no/such/release does not exist" in line
    line = _one_error(_tool(ROOT / "tools/convert_coca.py", f"--out={tmp_path}"), 2)
    assert "--release" in line and "--helpshort" in line


@pytest.mark.slow
def test_score_study_checks_folder_and_workdirs_first(tmp_path, fake_workdirs):
    probe, seg = fake_workdirs
    empty = tmp_path / "no_dicom"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a DICOM")
    tool = ROOT / "tools/score_study.py"
    line = _one_error(_tool(tool, empty, "--workdir", tmp_path), 2)
    assert "holds no DICOM file" in line
    dicom_dir = tmp_path / "series"
    dicom_dir.mkdir()
    (dicom_dir / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    line = _one_error(_tool(tool, dicom_dir, "--workdir", tmp_path / "nothing"), 2)
    assert "train it first" in line and "segment" in line
    # The probe's and the segmenter's workdirs swapped.
    line = _one_error(
        _tool(tool, dicom_dir, f"--probe_workdir={seg}", f"--segmenter_workdir={probe}"), 2
    )
    assert f"={probe} is a probe workdir, not a segment workdir" in line


@pytest.mark.slow
def test_infer_checks_mode_and_workdirs_before_loading(fake_workdirs, tmp_path):
    probe, seg = fake_workdirs
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    base = [ROOT / "tools/infer.py", f"--config={ROOT / 'configs/infer.py'}",
            f"--config.source.path={manifest}", f"--config.out_dir={tmp_path / 'out'}"]  # fmt: skip
    line = _one_error(
        _tool(*base, "--config.mode=gate", f"--config.probe_workdir={probe}",
              f"--config.segmenter_workdir={seg}"), 2,
    )  # fmt: skip
    assert "--config.mode='gate' is not one of ['gated', 'unet_only', 'both']" in line
    line = _one_error(
        _tool(*base, f"--config.probe_workdir={seg}", f"--config.segmenter_workdir={seg}"), 2
    )
    assert f"--config.probe_workdir={seg} is a segment workdir, not a probe workdir" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_config_mistakes_are_usage_errors(tmp_path):
    base = [ROOT / "tools/pretrain.py", f"--config={ROOT / 'configs/dinolg.py'}:tiny",
            f"--workdir={tmp_path / 'run'}"]  # fmt: skip
    assert _one_error(_tool(*base, "--config.foo=1"), 2) == (
        "error: bad config override: no config key 'foo'"
    )
    assert _one_error(_tool(*base, "--config.optim.lrr=1"), 2) == (
        "error: bad config override: no config key 'lrr'. Did you mean \"lr\"?"
    )
    line = _one_error(_tool(*base, "--config.data.manifest=/no/data"), 2)
    assert "--config.data.manifest=/no/data: no manifest.json there" in line
    line = _one_error(_tool(*base[:1], "--config=configs/none.py", f"--workdir={tmp_path}"), 2)
    assert "No such file or directory" in line
    line = _one_error(
        _tool(ROOT / "tools/probe.py", f"--config={ROOT / 'configs/probe.py'}:linear,runlocal",
              f"--workdir={tmp_path / 'p'}", f"--config.encoder={tmp_path / 'run'}"), 2,
    )  # fmt: skip
    assert "train it first (tools/pretrain.py" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "p").exists()


def test_unknown_config_keys_read_as_one_sentence():
    import ml_collections

    config = ml_collections.ConfigDict({"optim": {"lr": 1.0}, "seed": 0})
    cases = [
        (lambda: config.optim.lrr, "no config key 'lrr'. Did you mean \"lr\"?"),
        (lambda: config.optim.lrr.x, "no config key 'lrr'. Did you mean \"lr\"?"),
        (lambda: config.optim["lrr"], "no config key 'lrr'. Did you mean \"lr\"?"),
        (lambda: config.foo, "no config key 'foo'"),
        (lambda: config.seed.x, "'int' object has no attribute 'x'"),
    ]
    for fn, message in cases:
        with pytest.raises((AttributeError, KeyError)) as err:
            fn()
        assert cli._config_message(err.value) == message


def test_out_of_range_values_stop_every_training_tool_before_any_work(tmp_path):
    work = tmp_path / "run"
    cases = [
        ("pretrain.py", "dinolg.py:tiny", ["--config.data.batch_size=0", "--config.seed=-2"],
         "error: --config.data.batch_size=0 must be > 0; --config.data.seed=-2 must be >= 0; "
         "--config.seed=-2 must be >= 0"),
        ("segment.py", "segment.py:unet,runlocal", ["--config.optim.epochs=0"],
         "error: --config.optim.epochs=0 must be > 0"),
        ("probe.py", "probe.py:linear,runlocal", ["--config.data.worker_count=-1"],
         "error: --config.data.worker_count=-1 must be >= 0"),
        ("ablate.py", "ablation.py:tiny", ["--config.pretrain.data.global_size=0"],
         "error: --config.pretrain.data.global_size=0 must be > 0"),
    ]  # fmt: skip
    for tool, config, overrides, message in cases:
        proc = _tool(ROOT / "tools" / tool, f"--config={ROOT / 'configs' / config}",
                     f"--workdir={work}", *overrides)  # fmt: skip
        assert _one_error(proc, 2) == message
    assert not work.exists()


_INTERRUPTED_SCRIPT = """
from dinolg_jax.runtime import cli

def main(argv):
    raise KeyboardInterrupt  # Ctrl-C while a tool loads its data, before any loop

cli.run(main)
"""


def test_ctrl_c_outside_a_training_loop_is_one_line_and_status_130(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(_INTERRUPTED_SCRIPT)
    assert _one_error(_tool(script), 130) == (
        "error: interrupted (Ctrl-C); a training run keeps its last checkpoint: re-run the "
        "same command to resume"
    )


_LOGGING_SCRIPT = """
import sys
import jax.numpy as jnp
from absl import flags
from dinolg_jax.runtime import checkpoint, cli

flags.DEFINE_string("dir", None, "")

def main(argv):
    ckpt = checkpoint.Checkpointer(flags.FLAGS.dir, async_save=False)
    state = {"w": jnp.ones(3)}
    ckpt.save(1, state, None, {})
    checkpoint.restore_or_init(ckpt, state, lambda: state, flags.FLAGS.dir)
    ckpt.close()
    print("done")

cli.run(main)
"""


@pytest.mark.slow
def test_library_logs_stay_out_unless_verbosity_asks(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(_LOGGING_SCRIPT)
    quiet = _tool(script, f"--dir={tmp_path / 'a'}")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "done", quiet.stderr
    assert "resumed from step 1" in quiet.stderr  # the project's own line
    assert "orbax" not in quiet.stderr.lower()
    loud = _tool(script, f"--dir={tmp_path / 'b'}", "--verbosity=0")
    assert loud.returncode == 0, loud.stderr
    assert "orbax" in loud.stderr.lower() and "resumed from step 1" in loud.stderr


@pytest.mark.slow
def test_data_errors_exit_1_and_verbosity_shows_the_traceback(tmp_path):
    (tmp_path / "manifest.json").write_text('{"version": 1, "spl')
    line = _one_error(_tool(ROOT / "tools/verify_dataset.py", tmp_path), 1)
    assert f"{tmp_path / 'manifest.json'}: not valid JSON" in line
    loud = _tool(ROOT / "tools/verify_dataset.py", tmp_path, "--verbosity=0")
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "ManifestError" in loud.stderr


_FALLBACK_SCRIPT = """
import gc
import pathlib
import jax.numpy as jnp
from absl import flags
from dinolg_jax.runtime import checkpoint, cli

flags.DEFINE_string("dir", None, "")

def main(argv):
    ckpt = checkpoint.Checkpointer(flags.FLAGS.dir, async_save=False)
    state = {f"w{i}": jnp.full((64,), float(i)) for i in range(40)}
    ckpt.save(1, state, None, {})
    ckpt.save(2, {k: v + 1 for k, v in state.items()}, None, {})
    ckpt.close()
    data = max(pathlib.Path(flags.FLAGS.dir, "2", "state", "d").iterdir(),
               key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 1
    data.write_bytes(bytes(raw))
    ckpt = checkpoint.Checkpointer(flags.FLAGS.dir)
    restored, _ = checkpoint.restore_or_init(ckpt, state, lambda: None, flags.FLAGS.dir)
    ckpt.close()
    gc.collect()  # the failed read's sibling tasks are freed here, not at some later time
    print("restored", ckpt.restored_step, float(restored["w3"][0]))

cli.run(main)
"""


@pytest.mark.slow
def test_fallback_to_an_older_checkpoint_is_one_warning_line(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(_FALLBACK_SCRIPT)
    proc = _tool(script, f"--dir={tmp_path / 'ckpt'}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "restored 1 3.0"
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "is unusable" in ln]
    assert len(warnings) == 1 and f"{tmp_path / 'ckpt' / '2'} is unusable" in warnings[0]
