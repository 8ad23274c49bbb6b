"""Time to forget: wall time of ``unlearn --until-forget-rate 0.05`` per method, against retraining.

Class scenario (the shared conditional ``small`` digits model, forget class 8). Each method runs with its
defaults (steps, lr, batch) and ``--until-forget-rate 0.05`` (a probe of 64 DDIM-25 samples every 10
steps, scored by the domain classifier); the clock is the run's own ``wall_time_s`` (prepare + steps +
probes), and the probe time is shown apart. Retraining is ``unlearn --method retrain``: the base's recipe
(3,000 steps of batch 128) on the retain set. Its wall time is *estimated at the load of each method's run*:
recipe steps × the median time of a retrain step, measured (20 steps) just before and just after that run
— a retrain is nothing but those steps, and on a shared machine the load changes between runs.
``--full-retrain`` also runs it end to end.

Target (issue 8): SISS and DiMUM reach forget rate ≤ 0.05 in ≤ 10% of retraining's wall time.

    nice -n 5 .venv/bin/python bench/time_to_forget.py
    nice -n 5 .venv/bin/python bench/time_to_forget.py --methods siss,dimum --full-retrain
    nice -n 5 .venv/bin/python bench/time_to_forget.py --methods siss:lr=1e-3,siss:lr=1e-3,refresh_every=10

``name:key=value,...`` sets a method parameter, or the loop's ``lr``, ``steps`` or ``batch_size``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import CLASS_MODEL, fine_tuning_methods, load_average, machine, peak_rss_mb, table

def default_methods() -> list[str]:
    """Every registered fine-tuning method, plus SISS's fast mode as a variant."""
    return [*fine_tuning_methods(), "siss:refresh_every=10"]


LOOP_KEYS = {"lr": float, "steps": int, "batch_size": int}  # loop settings that may be given like parameters


def parse_method(text: str) -> tuple[str, dict, dict]:
    """``name[:key=value,...]`` → (name, method params, loop overrides); ``lr``, ``steps`` and ``batch_size``
    set the loop, every other key is a parameter of the method (typed by its config)."""
    from unlearnctl.methods import get_method

    name, _, rest = text.partition(":")
    types = {o.name: o.type for o in get_method(name).Config.options()}
    params, loop = {}, {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        if key in LOOP_KEYS:
            loop[key] = LOOP_KEYS[key](value)
        else:
            params[key] = types[key](value)
    return name, params, loop


def retrain_step_seconds(checkpoint, forget_set, steps: int = 20) -> float:
    """Median time of one step of retraining (the base recipe's batch, on the retain set)."""
    from unlearnctl.denoisers import denoiser_for
    from unlearnctl.methods.retrain import training_recipe
    from unlearnctl.training import TrainConfig, fit_denoiser

    recipe = training_recipe(checkpoint)
    config = TrainConfig(**{**recipe["train"], "steps": steps})
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(step, _unet):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    unet = checkpoint.build_unet("cpu")
    last[0] = time.perf_counter()
    fit_denoiser(denoiser_for(checkpoint, network=unet), forget_set.retain, config, on_step=tick)
    return statistics.median(times[2:] or times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(CLASS_MODEL))
    parser.add_argument("--forget-class", default="8")
    parser.add_argument("--methods", default=",".join(default_methods()), help="comma-separated name[:param=value,...]")
    parser.add_argument("--target", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=None, help="cap on steps per method (default: its default)")
    parser.add_argument("--full-retrain", action="store_true", help="run retrain end to end instead of estimating it")
    args = parser.parse_args(argv)

    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.data import ForgetSpec, load_recorded_data, resolve_forget
    from unlearnctl.methods.retrain import training_recipe
    from unlearnctl.metrics.classifier import load_or_train_classifier
    from unlearnctl.unlearning import UnlearnConfig, unlearn

    checkpoint = load_checkpoint(args.model)
    split = load_recorded_data(checkpoint.data)
    spec = ForgetSpec(classes=(args.forget_class,))
    forget_set = resolve_forget(spec, split)
    load_or_train_classifier(split)  # cached: not part of any method's time
    print(f"# time to forget — {checkpoint.path.name}, forget class {args.forget_class}, target forget rate ≤ {args.target}\n"
          f"# machine: {machine()}")

    recipe_steps = training_recipe(checkpoint)["train"]["steps"]
    retrain_steps = [retrain_step_seconds(checkpoint, forget_set)]  # re-measured after every method run
    loads = [load_average()]
    rows = []
    for text in _split(args.methods):
        name, params, loop = parse_method(text)
        config = UnlearnConfig(**{"steps": args.max_steps, **loop}, until_forget_rate=args.target, probe_every=10, seed=0,
                               device="cpu")
        torch.manual_seed(0)
        _, result = unlearn(checkpoint, name, spec, config, params, data=split)
        retrain_steps.append(retrain_step_seconds(checkpoint, forget_set))
        # retraining's wall time at the load of this run: recipe steps × its step time around the run
        retrain_s = recipe_steps * (retrain_steps[-2] + retrain_steps[-1]) / 2
        reached = result["stopped"] != "completed" and result["probes"] and result["probes"][-1]["forget_rate"] <= args.target
        rows.append([f"{text} (lr {result['lr']:g})", result["steps_run"], result["probes"][-1]["forget_rate"] if result["probes"] else None,
                     "yes" if reached else "no", result["wall_time_s"], result["probe_time_s"], retrain_s,
                     result["wall_time_s"] / retrain_s * 100 if reached else None,
                     (result["wall_time_s"] - result["probe_time_s"]) / retrain_s * 100 if reached else None])
        loads.append(load_average())
        print(f"  {text}: {result['steps_run']} steps, {result['stopped']}, {result['wall_time_s']:.1f} s", flush=True)
    how = (f"retrain estimated per run: {recipe_steps} recipe steps × the median retrain step measured just before and "
           f"just after that run ({', '.join(f'{t * 1000:.0f}' for t in retrain_steps)} ms)")
    if args.full_retrain:
        config = UnlearnConfig(seed=0, device="cpu")
        _, result = unlearn(checkpoint, "retrain", spec, config, {}, data=split)
        rows.append(["retrain (end to end)", recipe_steps, None, "(exact)", result["wall_time_s"], 0.0, result["wall_time_s"],
                     100.0, 100.0])
        how += f"; retrain end to end: {result['wall_time_s']:.0f} s"
    print(table(f"Time to forget rate ≤ {args.target} ({how}; load during the runs {loads[0]} … {loads[-1]})",
                ["method", "steps run", "last forget rate", "reached", "wall s", "of which probes s", "retrain s (same load)",
                 "% of retrain", "% of retrain without probes"], rows))
    print(f"\npeak RSS of this benchmark: {peak_rss_mb():.0f} MiB")
    return 0


def _split(text: str) -> list[str]:
    """Split ``a,b:x=1,y=2,c`` at commas that start a new method name (not a parameter)."""
    out: list[str] = []
    for part in text.split(","):
        if out and "=" in part and ":" not in part:
            out[-1] += "," + part
        else:
            out.append(part)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
