"""Shared pieces of the performance benchmarks (issue 8): machine facts, runners, interleaved timing, tables.

Timings on a shared machine drift with its load. Every benchmark therefore measures the things it
compares *side by side in one run*, interleaved round by round (A, B, C, A, B, C, ...), and reports
ratios per round (median over rounds, with its distribution-free 95% interval over the rounds) next to the
absolute medians and the load average.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
# the shared base models (``make bench`` trains them here on first use; the env variable points elsewhere)
ARTIFACTS = Path(os.environ.get("UNLEARNCTL_BENCH_MODELS", ROOT / "bench-models"))
CLASS_MODEL = ARTIFACTS / "digits-cond-small.safetensors"
CANARY_MODEL = ARTIFACTS / "canary-uncond-small.safetensors"
sys.path.insert(0, str(ROOT / "bench"))


def machine() -> str:
    """One line: CPU, cores, torch threads, load average (1/5/15 min), GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = load_average()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} thread(s) "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {gpu}; load average {load}")


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved(cases: dict[str, Callable[[], None]], rounds: int, reference: str | None = None,
                warmup: int = 1) -> dict[str, dict[str, float]]:
    """Time each case ``rounds`` times, interleaved; per case: median seconds per call and, when
    ``reference`` is given, the median over rounds of (case time / reference time in the same round) with
    its 95% order-statistic interval (``ratio_low``/``ratio_high``; ``None`` below 6 rounds)."""
    from unlearnctl.metrics.intervals import median_interval

    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    out = {}
    for name, values in times.items():
        row = {"median_s": statistics.median(values), "min_s": min(values)}
        if reference is not None:
            row["ratio"], row["ratio_low"], row["ratio_high"] = median_interval([v / r for v, r in zip(values, times[reference])])
            row["is_reference"] = name == reference
        out[name] = row
    return out


def ratio_cell(row: dict[str, float], speedup: bool = False) -> str:
    """``interleaved``'s median ratio with its 95% interval, as a table cell; ``speedup`` gives 1 / ratio."""
    if row.get("is_reference"):
        return "1 (reference)"
    ratio, low, high = row["ratio"], row["ratio_low"], row["ratio_high"]
    if speedup:
        ratio, low, high = 1 / ratio, (None if high is None else 1 / high), (None if low is None else 1 / low)
    if low is None:
        return f"{ratio:.3g} (too few rounds for an interval)"
    return f"{ratio:.3g} [{low:.3g}, {high:.3g}]"


def table(title: str, columns: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (printed, and pasted into docs/performance.md)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(columns[i]), *(len(r[i]) for r in cells)) for i in range(len(columns))]
    lines = [f"\n{title}\n", "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def fine_tuning_methods(model: str = "pixel") -> list[str]:
    """Every registered fine-tuning method that runs on ``model`` (the benchmarks' models are pixel ones), in
    registry order (the registry is the only list of methods)."""
    from unlearnctl.methods import available_methods

    return available_methods(exact=False, model=model)


def all_methods(model: str = "pixel") -> list[str]:
    """Every registered method that runs on ``model``, exact retraining included."""
    from unlearnctl.methods import available_methods

    return available_methods(model=model)


def build_runner(checkpoint, split, forget_set, method: str, params: dict | None = None, batch_size: int = 64,
                 seed: int = 0, lr: float = 1e-4, device: str = "cpu"):
    """A prepared method runner and its AdamW optimizer, set up exactly as ``unlearn`` does (``start_run``)."""
    from unlearnctl.methods import get_method
    from unlearnctl.unlearning import UnlearnConfig, UnlearnJob, start_run

    cls = get_method(method)
    config = UnlearnConfig(batch_size=batch_size, seed=seed, lr=lr, device=device).with_defaults(cls.defaults)
    job = UnlearnJob(checkpoint, method, cls.Config.from_dict(dict(params or {}), method), split, forget_set, config)
    state, _ = start_run(job, cls)
    state.method.prepare()
    return state.method, state.optimizer


def loop_step(runner, optimizer, grad_clip: float = 1.0) -> None:
    """One step of the shared unlearning loop (:func:`unlearnctl.unlearning.run_loop`) without bookkeeping."""
    params = runner.ctx.parameters()
    optimizer.zero_grad(set_to_none=True)
    runner.step()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def run_cli(args: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """Run ``unlearnctl ARGS`` in a fresh process: ``(wall seconds, peak RSS MiB, exit code)``."""
    return run_measured([str(ROOT / ".venv/bin/unlearnctl"), *args], env)


def run_measured(program: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """Run ``program`` in a fresh process under ``/usr/bin/time``: ``(wall seconds, peak RSS MiB, exit code)``."""
    command = ["/usr/bin/time", "-f", "%M", *program]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - started
    peak_kb = int(done.stderr.strip().splitlines()[-1]) if done.stderr.strip() else 0
    if done.returncode:
        sys.stderr.write(done.stderr[-2000:])
    return wall, peak_kb / 1024, done.returncode
