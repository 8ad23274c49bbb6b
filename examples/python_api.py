"""The Python API in one page: train, unlearn, attack, evaluate, compare, report — the calls the CLI makes.

    python examples/python_api.py OUT            # small models: about 15 minutes on 2 CPU cores
    python examples/python_api.py OUT --quick    # tiny models: a few minutes on 2 cores (see below)

--quick checks the wiring, not the methods: its models are trained 40 steps and draw no recognisable digits, so
every figure it prints (forget rate, FID, AUC) is meaningless, even though each is measured on enough samples
(20 forget-condition samples per model) not to be a coin flip of two. Add about a minute the first time, when
the domain classifier is trained and cached in $UNLEARNCTL_CACHE (default ~/.cache/unlearnctl).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unlearnctl.attacks.dimra import AttackConfig, relearn_attack
from unlearnctl.checkpoint import save_checkpoint
from unlearnctl.data import ForgetSpec, load_data
from unlearnctl.metrics.evaluate import EvalConfig, evaluate
from unlearnctl.methods import available_methods, get_method
from unlearnctl.metrics.membership import AuditConfig
from unlearnctl.report import compare, load_runs, write_report
from unlearnctl.training import TrainConfig, train_model
from unlearnctl.unlearning import UnlearnConfig, unlearn

METHOD = "siss"  # the method this example runs: any name from unlearnctl.methods.available_methods()


def main(out: Path, quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    preset, train_steps, steps = ("tiny", 40, 4) if quick else ("small", 1000, None)
    split = load_data("digits")
    forget = ForgetSpec(classes=("8",))

    # 1. a class-conditional base model (the lineage records the recipe, so `retrain` can repeat it)
    base = train_model(split, conditional=True, preset=preset, config=TrainConfig(steps=train_steps, batch_size=64))
    save_checkpoint(base, out / "base.safetensors")

    # 2. unlearn class 8 with METHOD, and retrain without it (the reference)
    models = {"base": base}
    reference = available_methods(exact=True)[0]  # exact retraining, from the registry
    for method in (reference, METHOD):
        model, run = unlearn(base, method, forget, UnlearnConfig(steps=None if get_method(method).exact else steps), data=split)
        save_checkpoint(model, out / f"{method}.safetensors")
        models[method] = model
        print(f"{method}: {run['steps_run']} steps in {run['wall_time_s']:.0f} s")

    # 3. the DiMRA relearning attack on the SISS model, with a relearning curve
    attack = AttackConfig(steps=4, batch_size=64, curve_samples=20, curve_sample_steps=4) if quick else \
        AttackConfig(steps=200, batch_size=64)
    attacked, curve = relearn_attack(models[METHOD], "retain", attack,
                                     curve_forget_spec=forget, curve_every=2 if quick else 50, data=split)
    save_checkpoint(attacked, out / f"{METHOD}-attacked.safetensors")
    (out / f"{METHOD}-curve.json").write_text(json.dumps(curve.to_json_dict(), indent=2))
    models[f"{METHOD}-attacked"] = attacked
    print(f"attack: forget rate {curve.before:.2f} -> {curve.after:.2f}")

    # 4. evaluate every model the same way (a flat dict per model; schema in docs/metrics.md)
    # --quick: 200 samples (20 per class, so 20 of the forgotten class), a small membership audit
    config = EvalConfig(num_samples=200, steps=4, audit=AuditConfig(repeats=1, max_images=100)) if quick else \
        EvalConfig(num_samples=1000, steps=25)
    for name, model in models.items():
        result = evaluate(model, forget, config, split=split)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
        print(f"{name}: forget rate {result['forget_rate']:.3f}, FID {result['fid']:.2f}")

    # 5. compare (rows grouped by method, retrain as the reference) and write the report
    comparison = compare(load_runs([out / f"{name}.json" for name in models] + [out / f"{METHOD}-curve.json"]))
    if quick:
        print("(--quick: tiny models trained 40 steps; these numbers check the wiring and say nothing about the methods)")
    print(comparison.to_markdown())
    write_report(comparison, out / "report.html")
    print(f"report: {out / 'report.html'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    main(args.out, args.quick)
