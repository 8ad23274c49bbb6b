"""Multi-process runs: each command on 1 process and under ``accelerate launch`` with N processes, outputs compared.

For ``train``, ``unlearn``, ``relearn-attack`` and ``evaluate`` (sharded sampling gathered on the main
process) the same command runs once as an ordinary process and once under
``accelerate launch --multi_gpu --num_processes N`` (CPU processes with gloo unless GPUs are visible),
with the same global batch. Printed per command: wall times, the largest weight difference relative to
how far the weights moved (checkpoints) or the largest metric difference (evaluation JSON), and that
exactly one output file was written.

    nice -n 5 .venv/bin/python bench/multiprocess.py                     # 2 CPU processes
    .venv/bin/python bench/multiprocess.py --processes 4 --gpu           # on a 4-GPU node (NCCL)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from common import CLASS_MODEL, ROOT, load_average, machine, table

BIN = ROOT / ".venv/bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], processes: int, gpu: bool) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ)
    if processes > 1:
        command = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                   "-m", "unlearnctl", *args]
        if not gpu:
            env.update(ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    else:
        command = [str(BIN / "unlearnctl"), *args]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
    return time.perf_counter() - started, done


def weight_gap(a: Path, b: Path, base: Path | None) -> str:
    one, two = load_file(a), load_file(b)
    keys = [k for k in one if one[k].is_floating_point()]
    diff = torch.cat([(two[k] - one[k]).flatten() for k in keys])
    if base is None:
        return f"max |Δw| {float(diff.abs().max()):.1e}"
    start = load_file(base)
    moved = torch.cat([(one[k] - start[k]).flatten() for k in keys])
    return (f"‖Δw‖/‖moved‖ {float(diff.norm() / moved.norm()):.1e}; "
            f"{float((diff.abs() <= 1e-6).float().mean()) * 100:.2f}% of weights within 1e-6")


def metric_gap(a: Path, b: Path) -> str:
    one, two = json.loads(a.read_text()), json.loads(b.read_text())
    keys = [k for k, v in one.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(two.get(k), (int, float))]
    worst = max(keys, key=lambda k: abs(one[k] - two[k]))
    return f"largest metric difference: {worst} {one[worst]:.6g} vs {two[worst]:.6g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(CLASS_MODEL))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="use the visible GPUs (NCCL) instead of CPU processes")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="unlearnctl-mp-"))
    n, s, model = args.processes, str(args.steps), args.model
    device = [] if args.gpu else ["--device", "cpu"]
    print(f"# multi-process runs — {n} processes ({'GPU, NCCL' if args.gpu else 'CPU, gloo'}), outputs in {out}\n# machine: {machine()}")
    cases = [
        ("train", lambda tag: ["train", "--data", "digits", "--size", "tiny", "--steps", s, "--batch-size", "32",
                               "--out", f"{out}/train-{tag}.safetensors", "-q", *device], "train-{}.safetensors", None),
        ("unlearn siss", lambda tag: ["unlearn", "--model", model, "--method", "siss", "--forget-class", "8", "--steps", s,
                                      "--batch-size", "32", "--out", f"{out}/siss-{tag}.safetensors", "-q", *device],
         "siss-{}.safetensors", model),
        ("unlearn dimum", lambda tag: ["unlearn", "--model", model, "--method", "dimum", "--forget-class", "8", "--steps", s,
                                       "--batch-size", "32", "--num-generated", "64", "--out", f"{out}/dimum-{tag}.safetensors",
                                       "-q", *device], "dimum-{}.safetensors", model),
        ("relearn-attack (curve)", lambda tag: ["relearn-attack", "--model", f"{out}/siss-1.safetensors", "--aux", "retain",
                                                "--steps", s, "--batch-size", "32", "--curve-every", s, "--curve-samples", "64",
                                                "--out", f"{out}/attack-{tag}.safetensors", "-q", *device],
         "attack-{}.safetensors", f"{out}/siss-1.safetensors"),
        ("evaluate (sharded sampling)", lambda tag: ["evaluate", "--model", model, "--forget-class", "8", "--num-samples", "200",
                                                     "--steps", "20", "--metric", "forget", "--metric", "retain", "--metric", "quality",
                                                     "--json", f"{out}/eval-{tag}.json", "-q", *device], "eval-{}.json", None),
    ]
    rows = []
    for name, make, pattern, base in cases:
        t1, d1 = run(make("1"), 1, args.gpu)
        tn, dn = run(make(str(n)), n, args.gpu)
        ok = d1.returncode == 0 and dn.returncode == 0
        a, b = out / pattern.format("1"), out / pattern.format(str(n))
        if not ok:
            gap = f"failed (exit {d1.returncode}/{dn.returncode})"
        elif pattern.endswith(".json"):
            gap = metric_gap(a, b)
        else:
            gap = weight_gap(a, b, Path(base) if base else None)
        written = len(list(out.glob(pattern.format(str(n)) + "*")))
        rows.append([name, t1, tn, gap, written, load_average()])
        print(f"  {name}: {gap}", flush=True)
    print(table(f"1 process vs {n} processes, same global batch", ["command", "1 process s", f"{n} processes s",
                                                                    "agreement", "files written", "load"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
