"""Peak memory (RSS) and wall time of every command of the demo, each in a fresh process.

The commands are the demo's (``unlearnctl demo``: batch 64, attack on the retain set with a relearning
curve, evaluation on 1,000 DDIM-25 samples), run on the shared class model with fewer optimizer steps:
peak memory does not depend on the number of steps (the wall times printed are for these short runs).
Peak RSS is ``/usr/bin/time``'s maximum resident set size of the command's process. Two baselines come
first: a Python process that only imports torch, and one that also imports diffusers' UNet.

    nice -n 5 .venv/bin/python bench/peak_memory.py
    nice -n 5 .venv/bin/python bench/peak_memory.py --steps 20 --out /tmp/peak
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import CLASS_MODEL, ROOT, load_average, machine, run_cli, run_measured, table, all_methods



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(CLASS_MODEL))
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of train/unlearn/attack runs")
    parser.add_argument("--out", default=None, help="folder for the outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="unlearnctl-peak-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"# peak memory per command — {Path(args.model).name}, outputs in {out}\n# machine: {machine()}")

    s, base = str(args.steps), args.model
    commands: list[tuple[str, list[str]]] = [
        ("train (small, conditional)", ["train", "--data", "digits", "--steps", s, "--batch-size", "64", "--out", f"{out}/base.safetensors", "-q"]),
        ("sample (100 images)", ["sample", "--model", base, "--out", f"{out}/grid.png", "-q"]),
    ]
    for method in all_methods():
        commands.append((f"unlearn --method {method}", ["unlearn", "--model", base, "--method", method, "--forget-class", "8",
                                                         "--steps", s, "--out", f"{out}/{method}.safetensors", "-q"]))
    commands += [
        ("unlearn siss --until-forget-rate 0.05", ["unlearn", "--model", base, "--method", "siss", "--forget-class", "8",
                                                   "--steps", s, "--until-forget-rate", "0.05", "--out", f"{out}/siss-probe.safetensors", "-q"]),
        ("relearn-attack (retain, curve)", ["relearn-attack", "--model", f"{out}/siss.safetensors", "--aux", "retain", "--steps", s,
                                            "--batch-size", "64", "--curve-every", s, "--curve-samples", "100",
                                            "--out", f"{out}/siss-attacked.safetensors", "-q"]),
        ("evaluate (1,000 samples, DDIM 25)", ["evaluate", "--model", f"{out}/siss.safetensors", "--num-samples", "1000", "--steps", "25",
                                               "--json", f"{out}/siss.json", "-q"]),
        ("evaluate base (1,000 samples)", ["evaluate", "--model", base, "--forget-class", "8", "--num-samples", "1000", "--steps", "25",
                                           "--json", f"{out}/base.json", "-q"]),
        ("compare (2 runs, HTML report)", ["compare", f"{out}/base.json", f"{out}/siss.json", "--report", f"{out}/report.html"]),
        ("inspect", ["inspect", base]),
        ("--help", ["--help"]),
    ]
    rows = []
    python = str(ROOT / ".venv/bin/python")
    for name, code in (("baseline: python -c 'import torch'", "import torch"),
                       ("baseline: import torch + diffusers UNet2DModel", "import torch; from diffusers import UNet2DModel, DDIMScheduler")):
        wall, peak, exit_code = run_measured([python, "-c", code])
        rows.append([name, peak, wall, exit_code, load_average()])
    for name, cli_args in commands:
        wall, peak, code = run_cli(cli_args)
        rows.append([name, peak, wall, code, load_average()])
        print(f"  {name}: {peak:.0f} MiB, {wall:.1f} s, exit {code}", flush=True)
    print(table(f"Peak RSS per command (fresh process each; {args.steps} optimizer steps where the command trains)",
                ["command", "peak RSS MiB", "wall s", "exit", "load"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
