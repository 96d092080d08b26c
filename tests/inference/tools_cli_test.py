"""tools/score_study.py and tools/infer.py run as a user runs them (subprocesses).

Models: the tiny U-Net workdir of ``conftest.seg_workdir`` (U-Net-only mode: no probe).
Studies: hand-built 16 x 16 px DICOM series (``fake_ct``). What is checked are the
lines a person reads and the exit status, against known answers: the series forced by
``--series_uid`` and the two warnings a 1 mm, 100 kVp series must get; the
``N scored, M skipped, K failed`` counts over a source with a corrupt study, on a first
run and a resumed one; exit status 1 when every study fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from fake_ct import make_ct

REPO = Path(__file__).resolve().parents[2]
UID_A, UID_B = "1.2.826.0.1.3680043.10.999.81", "1.2.826.0.1.3680043.10.999.82"


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")  # fmt: skip
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / tool), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _series(folder: Path, uid: str, number: int, step: float, kvp: float) -> None:
    """Six 16 x 16 px slices at 0.4 mm: 40 HU tissue, a row of air, a 600 HU plaque."""
    hu = np.full((6, 16, 16), 40, np.int16)
    hu[:, 0] = -1000
    hu[2:4, 6:10, 6:10] = 600
    for k in range(6):
        make_ct(folder / f"im{k}.dcm", z=step * k, instance=k + 1,
                pixels=(hu[k] + 1024).astype(np.uint16), series_uid=uid,
                series_number=number, thickness=step, kvp=kvp)  # fmt: skip


def test_score_study_series_uid_and_warnings_printed(tmp_path: Path, seg_workdir) -> None:
    study = tmp_path / "study"
    _series(study / "s3", UID_A, 3, 3.0, 120.0)  # what the series choice would take
    _series(study / "s7", UID_B, 7, 1.0, 100.0)
    out = tmp_path / "out"
    proc = _run("score_study.py", str(study), f"--segmenter_workdir={seg_workdir[0]}",
                "--mode=unet_only", f"--series_uid={UID_B}", f"--out={out}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Study study  (unet_only, 6 slices")
    series = [ln for ln in lines if ln.startswith("Series: ")]
    assert len(series) == 1 and series[0].startswith("Series: series 7 (6 slices, 1 mm")
    assert series[0].endswith("forced by series_uid")
    at = lines.index("Off-domain warnings (2; the scores are unchanged):")
    assert lines[at + 1 : at + 3] == [
        "  - slice thickness 1 mm outside 2.5-3 mm (Agatston is defined at 3 mm)",
        "  - tube voltage 100 kVp (Agatston's 130 HU is defined at 120 kVp)",
    ]
    assert (out / "ct.nii.gz").is_file() and (out / "labels.nii.gz").is_file()


def test_infer_counts_resume_and_all_failed_exit_status(tmp_path: Path, seg_workdir) -> None:
    root = tmp_path / "dicoms"
    for i, name in enumerate(("a", "b", "c")):
        _series(root / name, f"{UID_A}.{i}", 3, 3.0, 120.0)
    bad = root / "b" / "im3.dcm"
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated pixel data: b cannot be read
    out = tmp_path / "out"
    args = (
        "--config=configs/infer.py",
        f"--config.segmenter_workdir={seg_workdir[0]}",
        "--config.mode=unet_only",
        "--config.source.kind=dicom",
        "--config.batch_size=2",
    )
    first = _run("infer.py", *args, f"--config.source.path={root}", f"--config.out_dir={out}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.splitlines()[-1] == "2 scored, 0 skipped, 1 failed"
    again = _run("infer.py", *args, f"--config.source.path={root}", f"--config.out_dir={out}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.splitlines()[-1] == "0 scored, 2 skipped, 1 failed"
    # a source where every study fails: exit status 1, nothing scored
    broken = tmp_path / "broken"
    for name in ("d", "e"):
        _series(broken / name, f"{UID_B}.{ord(name)}", 3, 3.0, 120.0)
        f = broken / name / "im1.dcm"
        f.write_bytes(f.read_bytes()[:-100])
    failed = _run("infer.py", *args, f"--config.source.path={broken}",
                  f"--config.out_dir={tmp_path / 'out2'}")  # fmt: skip
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert failed.stdout.splitlines()[-1] == "0 scored, 0 skipped, 2 failed"
