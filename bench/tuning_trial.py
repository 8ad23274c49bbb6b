"""Tuning of issue 3: one unlearning run of the class scenario with given loop and method settings, scored.

Forget class 8 on the conditional ``small`` digits model, then the forget rate on ``--forget-samples``
class-8 samples and the retain accuracy on ``--retain-per-class`` samples of each other class (DDIM 50,
seed 0 — the protocol of ``bench/methods_figures.py``). ``--every N`` also scores the weights every N steps
along the same run (where in a run forgetting happens and what it costs the other classes). One JSON line
per scored point.

    .venv/bin/python bench/tuning_trial.py erasediff --steps 700 --lr-schedule cosine
    .venv/bin/python bench/tuning_trial.py siss --steps 1000 --lr 1e-4 --every 100
    .venv/bin/python bench/tuning_trial.py siss --param lambda_=0.25 --param scaling_share=0.075

The runs of docs/methods.md ran two at a time with ``--threads 1`` each; their wall times are not comparable.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import CLASS_MODEL  # bench/ is on sys.path when run as a script
from methods_figures import class_figures, parse_params
from unlearnctl.checkpoint import load_checkpoint
from unlearnctl.data import ForgetSpec, load_recorded_data, resolve_forget
from unlearnctl.methods import get_method
from unlearnctl.metrics.classifier import load_or_train_classifier
from unlearnctl.unlearning import LR_SCHEDULES, UnlearnConfig, unlearn


def snapshot_every(method: str, every: int) -> dict[int, dict[str, torch.Tensor]]:
    """Make ``method`` copy the model's weights every ``every`` steps (taken before the step, i.e. after
    ``n`` steps); returns the dict the copies go to."""
    cls, snapshots, calls = get_method(method), {}, [0]
    step = cls.step

    def recording_step(self):
        if calls[0] and calls[0] % every == 0:
            snapshots[calls[0]] = {k: v.detach().clone() for k, v in self.ctx.unet.state_dict().items()}
        calls[0] += 1
        return step(self)

    cls.step = recording_step
    return snapshots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method")
    parser.add_argument("--class-model", default=str(CLASS_MODEL))
    parser.add_argument("--forget-class", default="8")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES)
    parser.add_argument("--ema-decay", type=float)
    parser.add_argument("--param", action="append", default=[], help="method.name=value or name=value")
    parser.add_argument("--every", type=int, default=0, help="also score the weights every N steps (raw weights)")
    parser.add_argument("--forget-samples", type=int, default=200)
    parser.add_argument("--retain-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = load_checkpoint(args.class_model)
    split = load_recorded_data(base.data)
    classifier = load_or_train_classifier(split)
    spec = ForgetSpec(classes=(args.forget_class,))
    forget_class = resolve_forget(spec, split).class_ids[0]
    pairs = [p if "." in p.split("=")[0] else f"{args.method}.{p}" for p in args.param]
    params = parse_params(pairs).get(args.method, {})
    snapshots = snapshot_every(args.method, args.every) if args.every else {}
    config = UnlearnConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, lr_schedule=args.lr_schedule,
                           ema_decay=args.ema_decay, seed=args.seed, device="cpu")
    started = time.perf_counter()
    model, report = unlearn(base, args.method, spec, config, params, data=split)
    wall = time.perf_counter() - started
    points = {**{n: base.derive(w, {}) for n, w in snapshots.items()}, report["steps_run"]: model}
    loop = {k: report[k] for k in ("steps", "lr", "batch_size")}
    loop.update({k: model.lineage[-1]["params"][k] for k in ("lr_schedule", "ema_decay")})
    for at, checkpoint in sorted(points.items()):
        forget, retain = class_figures(checkpoint, split, classifier, forget_class, args.forget_samples,
                                       args.retain_per_class, args.seed)
        print(json.dumps({"method": args.method, "at_step": at, **loop, "params": params, "forget_rate": round(forget, 4),
                          "retain_accuracy": round(retain, 4), "wall_s": round(wall, 1)}), flush=True)


if __name__ == "__main__":
    main()
