"""experiments.demo.score_your_scan: the demo's closing lines name its models and a
command that tools/score_study.py reads as those same workdirs."""

import shlex
from pathlib import Path

from dinolg_jax.experiments import demo

ROOT = Path(__file__).resolve().parents[2]


def test_closing_lines_name_the_models_and_a_runnable_command(tmp_path: Path) -> None:
    lines = demo.score_your_scan(tmp_path / "demo_out")
    w = tmp_path / "demo_out"
    assert (
        lines[0] == f"models: encoder {w / 'pretrain'}, gate {w / 'probe'}, U-Net {w / 'segment'}"
    )
    argv = shlex.split(lines[-1])
    assert argv[:2] == ["python", "tools/score_study.py"] and (ROOT / argv[1]).is_file()
    # score_study.py: --workdir W stands for W/probe and W/segment, the stages' folders
    assert argv[argv.index("--workdir") + 1] == str(w)
    assert "--out" in argv and argv[2] == "YOUR_SCAN"
