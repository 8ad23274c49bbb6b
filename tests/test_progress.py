"""Progress on a stderr that is not a terminal (CI logs, ``nohup``): periodic one-line reports instead of a
bar that cannot redraw — every 10% of a loop's steps or every 30 s, and when it finishes."""

from __future__ import annotations

import re

from unlearnctl.cli.ui import ProgressLines
from unlearnctl.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_loop(lines: ProgressLines, clock: Clock, total: int, seconds_per_step: float, task: str = "train") -> None:
    for step in range(1, total + 1):
        clock.now += seconds_per_step
        lines(Progress(task, step, total, {"loss": 0.5 / step, "elapsed": clock.now}))


def test_a_fast_loop_prints_a_line_every_tenth_of_its_steps():
    written, clock = [], Clock()
    run_loop(ProgressLines(written.append, clock=clock), clock, total=200, seconds_per_step=0.01)
    assert [re.match(r"train: step (\d+)/200 \((\d+)%\)", line).groups() for line in written] == \
        [(str(20 * k), str(10 * k)) for k in range(1, 11)]
    assert "elapsed" in written[0] and "s left" in written[0] and "loss 0.025" in written[0]
    assert "left" not in written[-1]  # finished: nothing left to estimate


def test_a_slow_loop_prints_a_line_every_30_seconds():
    written, clock = [], Clock()
    run_loop(ProgressLines(written.append, clock=clock), clock, total=3000, seconds_per_step=1.0)
    # the clock starts at the first step: a line 30 s later, then every 30 s or at each 10% mark
    steps = [int(re.match(r"train: step (\d+)/", line).group(1)) for line in written]
    assert steps[:3] == [31, 61, 91] and steps[-1] == 3000
    assert all(0 < b - a <= 30 for a, b in zip(steps, steps[1:]))
    assert all(300 * k in steps for k in range(1, 11))
    assert written[steps.index(300)] == "train: step 300/3000 (10%), loss 0.001667, 299 s elapsed, ~2700 s left"


def test_a_loop_started_again_counts_from_its_new_start():
    written, clock = [], Clock()
    lines = ProgressLines(written.append, clock=clock)
    run_loop(lines, clock, total=10, seconds_per_step=1.0, task="sample")
    run_loop(lines, clock, total=10, seconds_per_step=1.0, task="sample")
    assert len(written) == 20 and written[10] == "sample: step 1/10 (10%), loss 0.5, 0 s elapsed"  # no rate yet
    assert written[11] == "sample: step 2/10 (20%), loss 0.25, 1 s elapsed, ~8 s left"


def test_the_cli_prints_progress_lines_when_stderr_is_not_a_terminal(cli, tmp_path, shapes_npz):
    result = cli("train", "--data", f"npz:{shapes_npz}", "--size", "tiny", "--steps", "20", "--batch-size", "16",
                 "--out", tmp_path / "m.safetensors")
    assert result.code == 0, result
    steps = re.findall(r"^train: step (\d+)/20 \(\d+%\), loss [0-9.e-]+, grad_norm [0-9.e-]+, \d+ s elapsed", result.err, re.M)
    assert steps == [str(2 * k) for k in range(1, 11)], result.err
    assert "━" not in result.err  # no bar drawn into a log
