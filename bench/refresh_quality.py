"""SISS fast mode: what refreshing the scaling factor C/‖g_a‖ only every K steps does to forgetting and quality.

Class scenario (forget class 8 of the shared conditional digits model). For each K (1 = exact) the same
``unlearn --method siss --refresh-every K`` run (same seed, steps, lr, batch) is timed, then evaluated
with ``evaluate`` on the same samples budget: forget rate (share of class-8 samples the domain classifier
calls 8), retain accuracy, and FID on the domain classifier's features, plus the forget-rate probes along
the run (every ``--probe-every`` steps).

    nice -n 5 .venv/bin/python bench/refresh_quality.py
    nice -n 5 .venv/bin/python bench/refresh_quality.py --refresh 1,4,10 --steps 200 --lr 1e-3
"""

from __future__ import annotations

import argparse

import torch

from common import CLASS_MODEL, load_average, machine, peak_rss_mb, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(CLASS_MODEL))
    parser.add_argument("--refresh", default="1,4,10")
    parser.add_argument("--steps", type=int, default=None, help="default: SISS's default")
    parser.add_argument("--lr", type=float, default=None, help="default: SISS's default")
    parser.add_argument("--probe-every", type=int, default=25)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--eval-steps", type=int, default=25)
    args = parser.parse_args(argv)

    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.data import ForgetSpec, load_recorded_data
    from unlearnctl.metrics.evaluate import EvalConfig, evaluate
    from unlearnctl.unlearning import UnlearnConfig, unlearn

    checkpoint = load_checkpoint(args.model)
    split = load_recorded_data(checkpoint.data)
    spec = ForgetSpec(classes=("8",))
    print(f"# SISS refresh interval — {checkpoint.path.name}, forget class 8\n# machine: {machine()}")
    eval_config = EvalConfig(num_samples=args.eval_samples, steps=args.eval_steps, metrics=("quality", "forget", "retain"),
                             device="cpu")
    rows, curves = [], {}
    base = evaluate(checkpoint, spec, eval_config, split=split)
    rows.append(["base model", "", "", base["forget_rate"], base["retain_accuracy"], base["fid"], "", load_average()])
    walls = {}
    for k in [int(v) for v in args.refresh.split(",")]:
        config = UnlearnConfig(steps=args.steps, lr=args.lr, seed=0, probe_every=args.probe_every, device="cpu")
        torch.manual_seed(0)
        model, result = unlearn(checkpoint, "siss", spec, config, {"refresh_every": k}, data=split)
        scores = evaluate(model, spec, eval_config, split=split)
        walls[k] = result["wall_time_s"] - result["probe_time_s"]
        curves[k] = " ".join(f"{p['forget_rate']:.2f}@{p['step']}" for p in result["probes"])
        rows.append([f"siss --refresh-every {k}", result["steps_run"], result["lr"], scores["forget_rate"],
                     scores["retain_accuracy"], scores["fid"], walls[k], load_average()])
        print(f"  K={k}: {rows[-1]}", flush=True)
    exact = walls.get(1)
    for row in rows[1:]:
        k = int(row[0].rsplit(" ", 1)[1])
        row.append(exact / walls[k] if exact else "")
    rows[0].append("")
    print(table(f"SISS fast mode: forgetting and quality after the same run ({args.eval_samples} samples, DDIM {args.eval_steps}; "
                "FID on domain-classifier features)",
                ["run", "steps", "lr", "forget rate", "retain accuracy", "FID", "unlearn s (no probes)", "load",
                 "speed-up vs K=1"], rows))
    print("\nforget-rate probes along each run (64 samples, DDIM 25):")
    for k, curve in curves.items():
        print(f"  K={k}: {curve}")
    print(f"\npeak RSS of this benchmark: {peak_rss_mb():.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
