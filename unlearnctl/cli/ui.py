"""Terminal output: results to stdout, progress bars to stderr, JSON for machines."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


class ProgressLines:
    """Progress for a stderr that is not a terminal (CI logs, ``nohup``, pipes): a bar cannot redraw there,
    so each task prints one line every ``every_percent`` of its steps or every ``every_s`` seconds, whichever
    comes first, and when it finishes::

        train: step 300/3000 (10%), loss 0.031, 58 s elapsed, ~520 s left
    """

    def __init__(self, write: Callable[[str], None], every_s: float = 30.0, every_percent: int = 10,
                 clock: Callable[[], float] = time.monotonic):
        self.write, self.every_s, self.every_percent, self.clock = write, every_s, every_percent, clock
        self.tasks: dict[str, dict[str, float]] = {}  # task -> first event's time and step, last line's time, step, bucket

    def __call__(self, event) -> None:
        now = self.clock()
        state = self.tasks.get(event.task)
        if state is None or event.step < state["step"]:  # a new task, or the same loop started again
            state = self.tasks[event.task] = {"start": now, "first": event.step, "printed": now, "step": 0, "bucket": 0}
        state["step"] = event.step
        total = max(int(event.total), 1)
        bucket = event.step * 100 // total // self.every_percent
        finished = event.step >= total
        if not (finished or bucket > state["bucket"] or now - state["printed"] >= self.every_s):
            return
        state["printed"], state["bucket"] = now, bucket
        elapsed = now - state["start"]
        parts = [f"{event.task}: step {event.step}/{event.total} ({event.step * 100 // total}%)"]
        parts += [f"{k} {_fmt(v)}" for k, v in event.info.items() if k != "elapsed"]
        parts.append(f"{elapsed:.0f} s elapsed")
        if not finished and event.step > state["first"]:  # the rate since the first event (the clock starts there)
            parts.append(f"~{elapsed / (event.step - state['first']) * (total - event.step):.0f} s left")
        self.write(", ".join(parts))


class ProgressBars:
    """A progress callback (see :mod:`unlearnctl.progress`) drawing one rich bar per task on stderr.

    Live figures in the event's ``info`` (loss, gradient norms, forget rate) are shown next to the bar.
    When stderr is not a terminal, periodic one-line reports (:class:`ProgressLines`) replace the bars.
    With ``quiet`` it draws nothing. ``heading`` is a status line shown when the first event arrives, so a
    run refused for bad input prints only its one error line.
    """

    def __init__(self, quiet: bool = False, heading: str | None = None):
        self.quiet = quiet
        self.heading = heading  # printed with the first event: after input was validated and work began
        terminal = stderr.is_terminal
        self.bars = Progress(
            TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=stderr, transient=False, disable=quiet or not terminal,
        )
        self.lines = None if quiet or terminal else ProgressLines(lambda line: stderr.print(line, highlight=False, soft_wrap=True))
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "ProgressBars":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def __call__(self, event) -> None:
        if self.quiet:
            return
        if self.heading:
            self.bars.console.print(self.heading, highlight=False)
            self.heading = None
        if self.lines is not None:
            self.lines(event)
            return
        if event.task not in self.tasks:
            self.tasks[event.task] = self.bars.add_task(event.task, total=event.total, info="")
        info = "  ".join(f"{k} {_fmt(v)}" for k, v in event.info.items() if k != "elapsed")
        self.bars.update(self.tasks[event.task], completed=event.step, total=event.total, info=info)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def note(message: str, quiet: bool = False) -> None:
    """A status line on stderr (never mixed into results on stdout)."""
    if not quiet:
        stderr.print(message, highlight=False)


def print_json(data: Any) -> None:
    if not stdout.quiet:  # quiet only in the non-main processes of a multi-process run
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, _fmt(value) if not isinstance(value, (dict, list)) else json.dumps(value))
    return table


def note_batch_draws(batch_size: int, sets: dict[str, int], quiet: bool = False) -> None:
    """Say once, on stderr, when ``--batch-size`` exceeds a set batches are drawn from: batches are drawn with
    replacement, so such a batch repeats images within one step (``sets``: ``{"training": 40, ...}``)."""
    small = [f"{count} {name}" for name, count in sets.items() if 0 < count < batch_size]
    if small:
        note(f"note: --batch-size {batch_size} is larger than the {' and the '.join(small)} images; batches are drawn "
             "with replacement, so images repeat within a step", quiet)
