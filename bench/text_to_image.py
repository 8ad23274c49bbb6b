"""Does the embedded text-to-image model draw the prompted digit? Its training time and prompted-class accuracy.

    python bench/text_to_image.py                      # trains `train --text-to-image` (default recipe), then scores it
    python bench/text_to_image.py --model t2i.safetensors --per-class 50 --guidance 1 --guidance 3

For each guidance scale: ``per_class`` samples for each digit's prompt ("a handwritten digit eight", ...), DDIM
50 steps, seed 0, scored by the digits' domain classifier (the one `evaluate` uses, cached); prints the share
labelled as the prompted digit with its count and 95% Wilson interval, per digit too. The training time is
the lineage's wall time of the `train` entry (this machine, its load printed alongside).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import ROOT, load_average, machine, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a trained text-to-image checkpoint (default: train one)")
    parser.add_argument("--out", type=Path, default=Path("bench-models/digits-t2i.safetensors"))
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--guidance", type=float, action="append")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(machine())
    model = args.model
    if model is None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(ROOT / ".venv/bin/unlearnctl"), "train", "--text-to-image", "--out", str(args.out)], check=True)
        model = args.out

    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.data import load_recorded_data
    from unlearnctl.metrics.classifier import load_or_train_classifier
    from unlearnctl.metrics.prompted import prompted_class_accuracy

    checkpoint = load_checkpoint(model)
    train = next(e for e in reversed(checkpoint.lineage) if e["command"] == "train")
    print(f"training: {train['wall_time_s']} s wall ({train['params']['train']['steps']} UNet steps, "
          f"{train['params']['autoencoder']['steps']} autoencoder steps; autoencoder held-out MSE "
          f"{train['params']['autoencoder']['heldout_mse']} {train['params']['autoencoder']['heldout_mse_ci95']}, "
          f"n={train['params']['autoencoder']['num_heldout']}); load now {load_average()}")
    classifier = load_or_train_classifier(load_recorded_data(checkpoint.data))
    rows = []
    for guidance in args.guidance or [1.0]:
        result = prompted_class_accuracy(checkpoint, classifier, per_class=args.per_class, guidance=guidance,
                                         sampler="pipeline", steps=50, seed=args.seed, device="cpu")
        print(json.dumps({k: v for k, v in result.items() if k != "prompts"}))
        rows.append([f"{guidance:g}", f"{result['prompt_accuracy']:.3f}",
                     f"{result['prompt_accuracy_count']}/{result['prompt_accuracy_n']}",
                     f"[{result['prompt_accuracy_ci95_low']:.3f}, {result['prompt_accuracy_ci95_high']:.3f}]",
                     min(result["per_class"].items(), key=lambda item: item[1]["accuracy"])[0]])
    print(table(f"prompted-digit accuracy of {model} (DDIM 50, seed {args.seed}, {args.per_class} per digit)",
                ["guidance", "accuracy", "count", "95% Wilson", "weakest digit"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
