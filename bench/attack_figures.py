"""Figure of issue 5: forget rate before and after the same DiMRA attack, per unlearning method.

Class scenario — the conditional ``small`` digits model, forget class 8. Each method's default unlearning
run (``unlearnctl unlearn``, reused when ``--models-dir`` already holds it) is attacked by the same
``unlearnctl relearn-attack`` (500 steps on the retain data by default, nothing tuned per method) with a
relearning curve. ``retrain`` — a model that never saw class 8 — is the control: its forget rate after the
attack tells how much "relearning" the attack produces from nothing.

    nice -n 5 .venv/bin/python bench/attack_figures.py                                # the table of issue 5
    nice -n 5 .venv/bin/python bench/attack_figures.py --methods salun,dimum --aux generated

Every step is an ``unlearnctl`` command run in-process; the script prints each one so it can be re-run by
hand. Outputs (checkpoints, curve JSON/CSV, ``table.json``) go to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from common import ARTIFACTS, CLASS_MODEL, all_methods, load_average  # bench/ is on sys.path when run as a script


def unlearnctl(*args: object) -> None:
    """Run one ``unlearnctl`` command in-process, echoing it; stop the figure on any failure."""
    from unlearnctl.cli.app import run

    argv = [str(a) for a in args]
    print("$ unlearnctl " + " ".join(shlex.quote(a) for a in argv), flush=True)
    code = run(argv)
    if code != 0:
        raise SystemExit(f"command failed with exit code {code}")


def unlearned_model(base: Path, method: str, forget_class: str, models_dir: Path, seed: int) -> Path:
    """The method's default unlearning run of ``base``; an existing file is reused only if its lineage matches."""
    from unlearnctl.checkpoint import load_checkpoint

    path = models_dir / f"{method}-class{forget_class}.safetensors"
    if path.exists():
        entry = load_checkpoint(path).lineage[-1]
        recorded = (entry.get("forget") or {}).get("spec", {}).get("classes")
        if entry.get("method") != method or recorded != [forget_class]:
            raise SystemExit(f"{path} exists but is not a {method} run forgetting class {forget_class}; move it away")
        print(f"# reusing {path}", flush=True)
        return path
    unlearnctl("unlearn", "--model", base, "--method", method, "--forget-class", forget_class, "--out", path,
               "--seed", seed, "--device", "cpu", "--quiet")
    return path


def base_forget_rate(args) -> float:
    """The base model's forget rate, measured exactly like every curve point (context for the table)."""
    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.data import ForgetSpec, load_recorded_data, resolve_forget
    from unlearnctl.metrics.classifier import load_or_train_classifier
    from unlearnctl.metrics.forget import measure_forgetting

    base = load_checkpoint(args.base)
    split = load_recorded_data(base.data)
    forget_set = resolve_forget(ForgetSpec(classes=(args.forget_class,)), split)
    result = measure_forgetting(base.build_unet("cpu"), base, forget_set, classifier=load_or_train_classifier(split),
                                num_samples=args.curve_samples, steps=args.curve_sample_steps, seed=0)
    return result["forget_rate"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=CLASS_MODEL)
    parser.add_argument("--methods", default=",".join(all_methods()), help="comma-separated (default: every registered method)")
    parser.add_argument("--forget-class", default="8")
    parser.add_argument("--aux", default="retain", help="the auxiliary source of every attack")
    parser.add_argument("--steps", type=int, default=500, help="attack steps (the same for every method)")
    parser.add_argument("--curve-every", type=int, default=100)
    parser.add_argument("--curve-samples", type=int, default=300)
    parser.add_argument("--curve-sample-steps", type=int, default=50)
    parser.add_argument("--models-dir", type=Path, default=ARTIFACTS / "unlearned",
                        help="unlearned checkpoints: made here if missing, reused if present")
    parser.add_argument("--out-dir", type=Path, default=ARTIFACTS / "attack")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    args.models_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"# load average at start: {load_average()} (2 shared cores; torch threads {torch.get_num_threads()})", flush=True)
    base_rate = base_forget_rate(args)
    print(f"# base model: forget rate {base_rate:.3f} (same measurement as the curves)", flush=True)
    rows = []
    for method in args.methods.split(","):
        model = unlearned_model(args.base, method, args.forget_class, args.models_dir, args.seed)
        stem = args.out_dir / f"{method}-attacked-{args.aux.replace(':', '').replace('/', '_')}"
        started = time.perf_counter()
        unlearnctl("relearn-attack", "--model", model, "--aux", args.aux, "--steps", args.steps,
                   "--curve-every", args.curve_every, "--forget-class", args.forget_class,
                   "--curve-samples", args.curve_samples, "--curve-sample-steps", args.curve_sample_steps,
                   "--curve-json", f"{stem}.json", "--curve-csv", f"{stem}.csv", "--out", f"{stem}.safetensors",
                   "--seed", args.seed, "--device", "cpu", "--quiet")
        curve = json.loads(Path(f"{stem}.json").read_text())
        row = {"method": method, "before": curve["forget_rate_before"], "after": curve["forget_rate_after"],
               "gap": curve["relearn_gap"], "curve": [(p["step"], p["forget_rate"]) for p in curve["points"]],
               "aux": curve["aux"], "attack_wall_s": round(time.perf_counter() - started, 1), "load": load_average()}
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print(f"DiMRA, --aux {args.aux}, {args.steps} steps; forget rate of class {args.forget_class} "
          f"({args.curve_samples} samples, DDIM {args.curve_sample_steps})")
    print(f"{'method':10} {'before':>7} {'after':>7} {'gap':>7}   curve (step: forget rate)")
    for row in rows:
        curve = "  ".join(f"{step}:{rate:.3f}" for step, rate in row["curve"])
        print(f"{row['method']:10} {row['before']:7.3f} {row['after']:7.3f} {row['gap']:+7.3f}   {curve}")
    print(f"# load average at end: {load_average()}")
    print(f"# base model (never unlearned): {base_rate:.3f}")
    (args.out_dir / "table.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "base_forget_rate": base_rate, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
