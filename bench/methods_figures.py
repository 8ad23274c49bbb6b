"""Figures of issue 3: every unlearning method's default run against exact retraining, side by side.

Class scenario — the conditional ``small`` digits model, forget class 8: forget rate (share of class-8
samples the domain classifier calls 8) and retain accuracy (share of samples of the other classes
classified as their class), before and after, the wall time of each method's default run and its ratio
to the wall time of ``retrain`` measured in the same run.

Canary scenario — the unconditional ``small`` model on digits+canary, forget the canary with ``siss``:
canary frequency (share of samples within the calibrated distance of the canary) on ``--canary-samples``
samples before and after.

    nice -n 5 .venv/bin/python bench/methods_figures.py                      # everything (retrain included)
    nice -n 5 .venv/bin/python bench/methods_figures.py --methods siss,dimum --skip-retrain
    nice -n 5 .venv/bin/python bench/methods_figures.py --methods erasediff --param erasediff.eta=0.5
    .venv/bin/python bench/methods_figures.py --save-dir models/   # then: bench/attack_figures.py --models-dir models/

``--skip-retrain`` takes the retrain time from the base's recorded training time (marked as such).
Timings depend on the machine's load: the script prints ``uptime``'s load average next to them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from unlearnctl.checkpoint import load_checkpoint, save_checkpoint
from unlearnctl.data import ForgetSpec, load_recorded_data, resolve_forget
from unlearnctl.diffusion import balanced_labels, sample_images
from unlearnctl.methods import available_methods, get_method
from unlearnctl.metrics.classifier import load_or_train_classifier
from unlearnctl.metrics.forget import class_forget_rate, data_forget_rate, data_forget_threshold, retain_accuracy
from unlearnctl.unlearning import UnlearnConfig, unlearn

from common import CANARY_MODEL, CLASS_MODEL, fine_tuning_methods, load_average  # bench/ is on sys.path when run as a script


def class_figures(checkpoint, split, classifier, forget_class: int, forget_samples: int, per_class: int, seed: int):
    """Forget rate on ``forget_samples`` samples of the forgotten class, retain accuracy on ``per_class`` per other class."""
    unet = checkpoint.build_unet("cpu").eval()
    forget_images = sample_images(unet, checkpoint.scheduler_config, labels=torch.full((forget_samples,), forget_class),
                                  null_class=checkpoint.null_class, steps=50, seed=seed)
    retained = [c for c in range(checkpoint.num_classes) if c != forget_class]
    labels = balanced_labels(retained, per_class)
    retain_images = sample_images(unet, checkpoint.scheduler_config, labels=labels, null_class=checkpoint.null_class,
                                  steps=50, seed=seed + 1)
    return class_forget_rate(forget_images, [forget_class], classifier), retain_accuracy(retain_images, labels, classifier)


def canary_frequency(checkpoint, forget_set, threshold: float, samples: int, seed: int) -> float:
    unet = checkpoint.build_unet("cpu").eval()
    images = sample_images(unet, checkpoint.scheduler_config, num_images=samples, steps=50, seed=seed)
    return data_forget_rate(images, forget_set.forget.images, threshold)


def parse_params(pairs: list[str]) -> dict[str, dict]:
    params: dict[str, dict] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        method, _, name = key.partition(".")
        field_type = next(o.type for o in get_method(method).Config.options() if o.name == name)
        params.setdefault(method, {})[name] = field_type(value)
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--class-model", default=str(CLASS_MODEL))
    parser.add_argument("--canary-model", default=str(CANARY_MODEL))
    parser.add_argument("--methods", default=",".join(fine_tuning_methods()), help="comma-separated; 'none' for no class runs")
    parser.add_argument("--forget-class", default="8")
    parser.add_argument("--skip-retrain", action="store_true", help="use the base's recorded training time instead")
    parser.add_argument("--skip-canary", action="store_true")
    parser.add_argument("--forget-samples", type=int, default=200)
    parser.add_argument("--retain-per-class", type=int, default=20)
    parser.add_argument("--canary-samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="override every method's steps (tuning)")
    parser.add_argument("--lr", type=float, default=None, help="override every method's learning rate (tuning)")
    parser.add_argument("--param", action="append", default=[], help="method.name=value, e.g. siss.lambda_=0.5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--save-dir", default=None,
                        help="also save each class-scenario model as <method>-class<K>.safetensors here "
                             "(bench/attack_figures.py --models-dir reuses them)")
    args = parser.parse_args(argv)
    params = parse_params(args.param)
    rows = []
    print(f"# load average at start: {load_average()} (2 shared cores; torch threads: {torch.get_num_threads()})", flush=True)

    base = load_checkpoint(args.class_model)
    split = load_recorded_data(base.data)
    classifier = load_or_train_classifier(split)
    spec = ForgetSpec(classes=(args.forget_class,))
    forget_class = resolve_forget(spec, split).class_ids[0]
    before = class_figures(base, split, classifier, forget_class, args.forget_samples, args.retain_per_class, args.seed)
    print(f"# base: forget rate {before[0]:.3f}, retain accuracy {before[1]:.3f} "
          f"(classifier held-out accuracy {classifier.heldout_accuracy:.3f})", flush=True)

    methods = [] if args.methods == "none" else args.methods.split(",")
    if not args.skip_retrain:
        methods.append("retrain")
    retrain_time = None
    for name in methods:
        assert name in available_methods(), name
        config = UnlearnConfig(steps=None if name == "retrain" else args.steps, lr=None if name == "retrain" else args.lr,
                               seed=args.seed, device="cpu")
        started = time.perf_counter()
        model, report = unlearn(base, name, spec, config, params.get(name, {}), data=split)
        wall = time.perf_counter() - started
        if args.save_dir:
            save_checkpoint(model, Path(args.save_dir) / f"{name}-class{args.forget_class}.safetensors")
        after = class_figures(model, split, classifier, forget_class, args.forget_samples, args.retain_per_class, args.seed)
        row = {"scenario": "class 8", "method": name, "steps": report["steps_run"], "stopped": report["stopped"],
               "forget_before": before[0], "forget_after": after[0], "retain_before": before[1], "retain_after": after[1],
               "wall_s": wall, "load": load_average(), "prepared": report["prepared"], "params": report["method_params"]}
        if name == "retrain":
            retrain_time = wall
        rows.append(row)
        print(json.dumps(row), flush=True)
    if retrain_time is None:
        retrain_time = float(base.lineage[0]["wall_time_s"])
        print(f"# retrain time taken from the base's recorded training time: {retrain_time:.0f} s (not measured here)")

    if not args.skip_canary:
        canary = load_checkpoint(args.canary_model)
        canary_split = load_recorded_data(canary.data)
        canary_spec = ForgetSpec(canary=True)
        forget_set = resolve_forget(canary_spec, canary_split)
        threshold = data_forget_threshold(forget_set.forget.images, forget_set.retain.images)
        freq_before = canary_frequency(canary, forget_set, threshold, args.canary_samples, args.seed)
        started = time.perf_counter()
        model, report = unlearn(canary, "siss", canary_spec, UnlearnConfig(seed=args.seed, device="cpu"),
                                params.get("siss", {}), data=canary_split)
        wall = time.perf_counter() - started
        freq_after = canary_frequency(model, forget_set, threshold, args.canary_samples, args.seed)
        row = {"scenario": "canary", "method": "siss", "steps": report["steps_run"], "stopped": report["stopped"],
               "forget_before": freq_before, "forget_after": freq_after, "retain_before": None, "retain_after": None,
               "wall_s": wall, "load": load_average(), "prepared": report["prepared"], "params": report["method_params"],
               "threshold": threshold, "samples": args.canary_samples,
               "canary_train_time_s": canary.lineage[0].get("wall_time_s")}
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print(f"{'scenario':9} {'method':11} {'steps':>5} {'forget before→after':>20} {'retain before→after':>20} "
          f"{'wall s':>8} {'÷ retrain':>9}")
    for row in rows:
        retain = ("" if row["retain_before"] is None else f"{row['retain_before']:.3f} → {row['retain_after']:.3f}")
        print(f"{row['scenario']:9} {row['method']:11} {row['steps']:>5} "
              f"{row['forget_before']:.3f} → {row['forget_after']:.3f}".ljust(48) + f"{retain:>20} "
              f"{row['wall_s']:8.1f} {row['wall_s'] / retrain_time:9.3f}")
    print(f"# retrain time {retrain_time:.1f} s; load average at end: {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "retrain_time_s": retrain_time}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
