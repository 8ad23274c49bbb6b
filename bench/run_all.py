"""Run every benchmark (``make bench``): each prints its table; all output also goes to ``bench-out/``.

Performance (issue 8), in this order: step times, sampling throughput, SISS refresh interval, time to
forget, scale, peak memory, multi-process agreement. ``--figures`` also runs the other issues' figure
scripts (methods, evaluate, attack, base quality). None of this is part of the test suite.

    nice -n 5 .venv/bin/python bench/run_all.py                  # ~1 h on 2 busy CPU cores
    nice -n 5 .venv/bin/python bench/run_all.py --quick          # small settings, a few minutes
    nice -n 5 .venv/bin/python bench/run_all.py --only step_times,scale
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, full arguments, quick arguments)
PERFORMANCE = [
    ("step_times", [], ["--rounds", "3", "--refresh", "4"]),
    ("sampling_throughput", ["--compile"], ["--images", "64", "--steps", "10", "--rounds", "2", "--batches", "16,64"]),
    ("refresh_quality", [], ["--refresh", "1,10", "--steps", "30", "--eval-samples", "200", "--eval-steps", "10"]),
    ("time_to_forget", [], ["--methods", "siss,dimum", "--max-steps", "30"]),
    ("scale", [], ["--rounds", "1", "--steps", "3", "--scales", "1,4"]),
    ("peak_memory", [], ["--steps", "3"]),
    ("multiprocess", [], ["--steps", "2"]),
]
FIGURES = [("methods_figures", []), ("evaluate_figures", []), ("attack_figures", []), ("base_quality", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small settings: checks the scripts run, not figures to quote")
    parser.add_argument("--only", default=None, help="comma-separated script names")
    parser.add_argument("--figures", action="store_true", help="also run the other issues' figure scripts")
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(name, quick if args.quick else full) for name, full, quick in PERFORMANCE]
    if args.figures:
        plan += FIGURES
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {name for name, _ in plan}
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(n for n, _ in plan)}")
        plan = [(name, extra) for name, extra in plan if name in wanted]
    failed = []
    for name, extra in plan:
        command = [sys.executable, str(HERE / f"{name}.py"), *extra]
        print(f"\n=== {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        with open(out / f"{name}.txt", "w") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent)
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
            code = process.wait()
        print(f"=== {name}: exit {code}, {time.perf_counter() - started:.0f} s (log: {out / (name + '.txt')})", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
