"""Progress reporting through a callback, so library loops stay usable from notebooks and programs.

A loop calls ``progress(Progress(...))`` after each step; the CLI plugs in a rich bar on stderr.
``None`` means silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Progress:
    """One progress event: ``task`` advanced to ``step`` of ``total``; ``info`` holds live figures."""

    task: str
    step: int
    total: int
    info: dict[str, float] = field(default_factory=dict)


ProgressFn = Optional[Callable[[Progress], None]]


def report(progress: ProgressFn, task: str, step: int, total: int, **info: float) -> None:
    if progress is not None:
        progress(Progress(task, step, total, info))
