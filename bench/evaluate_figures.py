"""Figures of issue 4 (`unlearnctl evaluate`), each from ``unlearnctl`` commands run in-process.

1. FID equality: our FID vs ``torch_fidelity.calculate_metrics`` called directly on the PNGs that
   ``--save-samples`` wrote, with the same registered extractor (|Δ| must be < 1e-3).
2. Feature-space sanity: FID between two halves of the real digits vs FID of uniform-noise images.
3. Class scenario (conditional ``small`` digits, forget class 8): forget rate, retain accuracy, FID and the
   membership audit of the base and of ``retrain`` (exact unlearning).
4. Data scenario (unconditional ``small`` digits+canary, forget the canary): forget rate and the membership
   audit of the canary base (memorised) and of its ``retrain``, raw and calibrated with a reference model
   that never saw the canary nor the held-out images (``--audit-reference``).
5. Timing: ``evaluate`` of 10,000 samples of the base, split into sampling and scoring.

    nice -n 5 .venv/bin/python bench/evaluate_figures.py                 # everything (models reused or built)
    nice -n 5 .venv/bin/python bench/evaluate_figures.py --only class,canary --num-samples 2000

Missing ``retrain`` models are built with ``unlearnctl unlearn --method retrain`` (the base's recipe,
~10 min each on 2 free cores). Outputs (JSON per evaluation, ``figures.json``) go to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from common import ARTIFACTS, CANARY_MODEL, CLASS_MODEL  # bench/ is on sys.path when run as a script
FIGURES = ("fid", "halves", "class", "canary", "timing")


def unlearnctl(*args: object) -> float:
    """Run one ``unlearnctl`` command in-process, echoing it; returns its wall time."""
    from unlearnctl.cli.app import run

    argv = [str(a) for a in args]
    print("$ unlearnctl " + " ".join(shlex.quote(a) for a in argv), flush=True)
    started = time.perf_counter()
    code = run(argv)
    if code not in (0, 3):
        raise SystemExit(f"command failed with exit code {code}")
    return time.perf_counter() - started


def retrained(base: Path, forget: list[str], out: Path) -> Path:
    if not out.exists():
        unlearnctl("unlearn", "--model", base, "--method", "retrain", *forget, "--out", out, "--quiet")
    return out


def evaluation(out_dir: Path, name: str, *args: object) -> dict:
    path = out_dir / f"{name}.json"
    unlearnctl("evaluate", *args, "--json", path, "--quiet")
    return json.loads(path.read_text())


def fid_equality(args, out: Path) -> dict:
    import torch_fidelity

    import unlearnctl.metrics.fidelity  # noqa: F401  (registers the extractor with torch-fidelity)

    samples = out / "fid-samples"
    ours = evaluation(out, "fid-check", "--model", args.base, "--metric", "quality", "-n", args.num_samples,
                      "--save-samples", samples)
    extractor = ours["provenance"]["extractor"]
    direct = torch_fidelity.calculate_metrics(
        input1=str(samples / "retain"), input2=str(samples / "real"), fid=True, cuda=False, cache=False, verbose=False,
        save_cpu_ram=True, feature_extractor=extractor["fidelity_name"],
        feature_extractor_weights_path=extractor["path"])["frechet_inception_distance"]
    return {"fid_ours": ours["fid"], "fid_torch_fidelity": direct, "abs_diff": abs(ours["fid"] - direct)}


def halves_vs_noise(args, out: Path) -> dict:
    import torch

    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.data import load_recorded_data
    from unlearnctl.metrics.classifier import load_or_train_classifier
    from unlearnctl.metrics.fidelity import classifier_space, fidelity_metrics, to_pixels

    split = load_recorded_data(load_checkpoint(args.base).data)
    space = classifier_space(load_or_train_classifier(split))
    real = to_pixels(split.train.images)
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    half_a, half_b = real[order[: len(real) // 2]], real[order[len(real) // 2:]]
    noise = torch.randint(0, 256, half_a.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return {"fid_half_vs_half": fidelity_metrics(half_a, half_b, space, kid=False, prc=False)["fid"],
            "fid_noise_vs_half": fidelity_metrics(noise, half_b, space, kid=False, prc=False)["fid"],
            "images_per_half": len(half_a)}


def scenario(out: Path, models: dict[str, Path], forget: list[str], num_samples: int, reference: Path | None = None) -> dict:
    keys = ("forget_rate", "forget_threshold", "retain_accuracy", "fid", "precision", "recall", "membership_auc",
            "membership_auc_std", "membership_balanced_accuracy", "membership_tpr_at_1pct_fpr", "membership_epsilon_lb",
            "membership_loss_ratio", "membership_members", "membership_nonmembers")
    table = {}
    for name, model in models.items():
        result = evaluation(out, name, "--model", model, *forget, "-n", num_samples)
        row = {k: result[k] for k in keys}
        if reference is not None:
            calibrated = evaluation(out, f"{name}-calibrated", "--model", model, *forget, "-n", 1,
                                    "--metric", "membership", "--audit-reference", reference)
            row["membership_auc_calibrated"] = calibrated["membership_auc"]
            row["membership_epsilon_lb_calibrated"] = calibrated["membership_epsilon_lb"]
        table[name] = row
    return table


def timing(args, out: Path) -> dict:
    wall = unlearnctl("evaluate", "--model", args.base, "--forget-class", "8", "-n", args.timing_samples,
                      "--json", out / "timing.json", "--quiet")
    split = json.loads((out / "timing.json").read_text())["provenance"]["timing_s"]
    return {"num_samples": args.timing_samples, "command_wall_s": round(wall, 1), **split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=CLASS_MODEL)
    parser.add_argument("--retrain", type=Path, default=ARTIFACTS / "evaluate" / "digits-retrain-8.safetensors")
    parser.add_argument("--canary-base", type=Path, default=CANARY_MODEL)
    parser.add_argument("--canary-retrain", type=Path, default=ARTIFACTS / "evaluate" / "canary-retrain.safetensors")
    parser.add_argument("--canary-reference", type=Path, default=CLASS_MODEL,
                        help="calibration model that never saw the canary nor the held-out digits")
    parser.add_argument("--num-samples", type=int, default=2000, help="samples per evaluation of figures 1, 3, 4")
    parser.add_argument("--timing-samples", type=int, default=10_000)
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--out-dir", type=Path, default=ARTIFACTS / "evaluate" / "figures")
    args = parser.parse_args()
    only = set(args.only.split(","))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figures_path = args.out_dir / "figures.json"
    figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
    if "fid" in only:
        figures["fid_equality"] = fid_equality(args, args.out_dir)
    if "halves" in only:
        figures["halves_vs_noise"] = halves_vs_noise(args, args.out_dir)
    if "class" in only:
        retrain = retrained(args.base, ["--forget-class", "8"], args.retrain)
        figures["class_scenario"] = scenario(args.out_dir, {"class-base": args.base, "class-retrain": retrain},
                                             ["--forget-class", "8"], args.num_samples)
    if "canary" in only:
        retrain = retrained(args.canary_base, ["--forget-canary"], args.canary_retrain)
        figures["canary_scenario"] = scenario(args.out_dir, {"canary-base": args.canary_base, "canary-retrain": retrain},
                                              ["--forget-canary"], args.num_samples, reference=args.canary_reference)
    if "timing" in only:
        figures["timing"] = timing(args, args.out_dir)
    figures_path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
