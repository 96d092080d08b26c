"""runtime.progress: the progress line's rate, time left and cadence on a fake clock."""

import io

from dinolg_jax.runtime.progress import Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_format_duration():
    assert [format_duration(s) for s in (0, 7.4, 59.6, 141, 3600, 3725, -3)] == [
        "0s", "7s", "1m00s", "2m21s", "1h00m", "1h02m", "0s",
    ]  # fmt: skip


def test_plain_lines_every_interval_with_rate_after_the_compiling_step():
    clock, out = Clock(), io.StringIO()
    p = Progress(100, 20, stream=out, tty=False, every_s=30, clock=clock)  # resumed at 20
    clock.t += 40  # step 21 compiles: 40 s, excluded from the rate
    p.update(21)
    assert out.getvalue() == "step 21/100 (21%) | rate ...\n"  # 40 s >= 30 s: a line
    for step in range(22, 101):  # then 2 steps per second
        clock.t += 0.5
        p.update(step)
    lines = out.getvalue().splitlines()
    # 30 s after the first line: step 81 (60 steps at 2/s); then the last step
    assert lines[1:] == [
        "step 81/100 (81%) | 2.00 steps/s | 10s left",
        "step 100/100 (100%) | 2.00 steps/s | 0s left",
    ]
    p.close()  # no terminal line to end
    assert len(out.getvalue().splitlines()) == 3


def test_a_terminal_gets_one_line_redrawn_in_place_and_cleared_for_logs():
    clock, out = Clock(), io.StringIO()
    p = Progress(10, 0, stream=out, tty=True, redraw_s=1.0, clock=clock)
    for step in range(1, 5):
        clock.t += 0.25 if step > 1 else 5.0
        p.update(step)
    # step 1 drawn (5 s since start); steps 2-4 within 1 s of it: not redrawn
    assert out.getvalue() == "\rstep 1/10 (10%) | rate ...\x1b[K"
    p.clear()
    clock.t += 1.0
    p.update(5)  # 4 steps in 1.75 s since step 1
    rate = 4 / 1.75
    left = format_duration(5 / rate)
    assert out.getvalue().endswith(
        f"\r\x1b[K\rstep 5/10 (50%) | {rate:.2f} steps/s | {left} left\x1b[K"
    )
    p.close()
    assert out.getvalue().endswith("\x1b[K\n") and "\n" not in out.getvalue()[:-1]


def test_other_processes_write_nothing():
    clock, out = Clock(), io.StringIO()
    p = Progress(3, 0, stream=out, tty=True, clock=clock, enabled=False)
    for step in (1, 2, 3):
        clock.t += 10
        p.update(step)
    p.clear()
    p.close()
    assert out.getvalue() == ""
