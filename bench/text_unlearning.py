"""Issue 15's figures: every method (ESD included) on the embedded text-to-image model, forgetting a concept.

For each registered method (or ``--methods``), its default run on ``--model`` (the embedded default, trained by
``bench/text_to_image.py``) forgets ``--forget-class`` (the digit's images and captions); ``evaluate``'s forget
and retain groups then score the base and every result on ``--num-samples`` samples (DDIM ``--steps``, seed 0,
balanced over the ten digits' prompts, so a tenth are the concept's): the concept's forget rate and the
retained prompts' accuracy, each with its count and 95% Wilson interval, and each run's wall time as a
ratio to ``retrain``'s measured in the same run. ``--attack-steps N`` also attacks every result with DiMRA
(auxiliary retain pairs, lr 1e-4) and records its relearning curve: the forget rate every ``--attack-every`` steps
on the evaluation's forget-prompt samples (same noise, so step 0 is the evaluation's figure).

    nice .venv/bin/python bench/text_unlearning.py --model bench-models/digits-t2i.safetensors --num-samples 5000
    .venv/bin/python bench/text_unlearning.py --model M --methods esd-x,salun --num-samples 1000 --steps 10   # quick look
    .venv/bin/python bench/text_unlearning.py --model M --methods naive,esd-x --unlearn-steps 2 --num-samples 40 --steps 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import load_average, machine, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--forget-class", default="8")
    parser.add_argument("--methods", default="", help="comma-separated (default: every registered method)")
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--attack-steps", type=int, default=0)
    parser.add_argument("--attack-every", type=int, help="relearning-curve interval (default: a fifth of --attack-steps)")
    parser.add_argument("--attack-samples", type=int, default=500, help="forget-prompt samples per curve point")
    parser.add_argument("--unlearn-steps", type=int, help="override every method's default steps (a wiring check)")
    parser.add_argument("--out", type=Path, default=Path("bench-models/text-unlearning"))
    args = parser.parse_args(argv)

    from unlearnctl.checkpoint import load_checkpoint, save_checkpoint
    from unlearnctl.data import ForgetSpec
    from unlearnctl.methods import available_methods
    from unlearnctl.metrics.evaluate import EvalConfig, evaluate
    from unlearnctl.unlearning import UnlearnConfig, unlearn

    print(machine())
    args.out.mkdir(parents=True, exist_ok=True)
    base = load_checkpoint(args.model)
    spec = ForgetSpec(classes=(args.forget_class,))
    scoring = EvalConfig(num_samples=args.num_samples, steps=args.steps, metrics=("forget", "retain"), device="cpu")
    methods = args.methods.split(",") if args.methods else available_methods()
    results = {"base": {**evaluate(base, spec, scoring), "wall_time_s": None}}
    for method in methods:
        started = time.perf_counter()
        model, _ = unlearn(base, method, spec, UnlearnConfig(device="cpu", steps=args.unlearn_steps))
        wall = time.perf_counter() - started
        save_checkpoint(model, args.out / f"{method}.safetensors")
        results[method] = {**evaluate(model, spec, scoring), "wall_time_s": wall}
        if args.attack_steps:
            results[method]["attack"] = attack(model, args)
        print(json.dumps({method: summary(results[method])}), flush=True)
    (args.out / "results.json").write_text(json.dumps({k: summary(v) for k, v in results.items()}, indent=1))
    retrain = results.get("retrain", {}).get("wall_time_s")
    rows = [row(name, scores, results["base"], retrain) for name, scores in results.items()]
    print(table(f"{args.model}: forget class {args.forget_class}, {args.num_samples} samples (DDIM {args.steps}, seed 0), "
                f"one seed per method; load {load_average()}",
                ["run", "forget rate [95% CI] (count/n)", "retain accuracy [95% CI] (count/n)", "Δ retain",
                 "wall s", "÷ retrain", "attack: start → end"], rows))
    return 0


def attack(model, args) -> dict:
    from unlearnctl.attacks.dimra import AttackConfig, relearn_attack

    every = args.attack_every or max(1, args.attack_steps // 5)
    config = AttackConfig(steps=args.attack_steps, lr=1e-4, curve_samples=args.attack_samples, curve_sample_steps=args.steps,
                          curve_eval_samples=args.num_samples)  # step 0 = the evaluation's forget rate
    _, curve = relearn_attack(model, "retain", config, curve_every=every, device="cpu")
    return {"points": curve.points}


def summary(scores: dict) -> dict:
    keep = ("forget_rate", "retain_accuracy", "wall_time_s", "attack")
    return {k: v for k, v in scores.items() if k.startswith(keep)}


def rate(scores: dict, key: str) -> str:
    return (f"{scores[key]:.3f} [{scores[key + '_ci95_low']:.3f}, {scores[key + '_ci95_high']:.3f}] "
            f"({scores[key + '_count']}/{scores[key + '_n']})")


def row(name: str, scores: dict, base: dict, retrain_s: float | None) -> list:
    wall = scores.get("wall_time_s")
    points = scores.get("attack", {}).get("points", [])
    attacked = f"{points[0]['forget_rate']:.3f} → {points[-1]['forget_rate']:.3f}" if points else "—"
    return [name, rate(scores, "forget_rate"), rate(scores, "retain_accuracy"),
            f"{scores['retain_accuracy'] - base['retain_accuracy']:+.3f}", "—" if wall is None else f"{wall:.0f}",
            "—" if wall is None or not retrain_s else f"{wall / retrain_s:.2f}", attacked]


if __name__ == "__main__":
    raise SystemExit(main())
