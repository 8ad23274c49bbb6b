"""Scale: cost of ``unlearn`` as the training set grows 1×, 4×, 16× (augmented copies), against ``retrain``.

The training split of the class scenario is grown with augmented copies (each copy: every image shifted by
a random pixel offset in {−1, 0, 1}² and given N(0, 0.05²) pixel noise). For each size, in a fresh process
(so peak memory is that size's own):

* ``unlearn`` (``siss`` and ``dimum``, forget class 8, batch 64): set-up (``prepare``) time, median step
  time and peak RSS — an unlearning step touches one batch, so these should stay flat;
* ``retrain``: median step time (batch 128) and peak RSS, and the wall time of retraining for the *same
  number of epochs* as the base recipe (3,000 steps × 128 / 1,438 images ≈ 267 epochs), which grows with
  the data.

Sizes are measured round-robin (1×, 4×, 16×, 1×, ...) for ``--rounds`` rounds; medians are reported.

    nice -n 5 .venv/bin/python bench/scale.py
    nice -n 5 .venv/bin/python bench/scale.py --scales 1,4,16 --rounds 2 --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import CLASS_MODEL, ROOT, load_average, machine, peak_rss_mb, table

KINDS = ["unlearn siss", "unlearn dimum", "retrain"]


def augmented_split(split, copies: int, seed: int = 0):
    """``split`` whose train set holds the originals plus ``copies − 1`` augmented copies."""
    from unlearnctl.data import DataSplit, ImageSet

    train = split.train
    g = torch.Generator().manual_seed(seed)
    images, labels = [train.images], [train.labels]
    for _ in range(copies - 1):
        shift = torch.randint(-1, 2, (2,), generator=g)
        noisy = train.images.roll(shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        noisy = (noisy + 0.05 * torch.randn(noisy.shape, generator=g)).clamp(-1, 1)
        images.append(noisy)
        labels.append(train.labels)
    grown = ImageSet(torch.cat(images), torch.cat(labels), train.class_names)
    description = {**split.description, "num_train": len(grown), "fingerprint": grown.fingerprint}
    return DataSplit(grown, split.heldout, description)


def measure_one(kind: str, copies: int, steps: int, model: str) -> dict:
    """Runs in a fresh process: set-up time, median step time and peak RSS of ``kind`` at ``copies``×."""
    from common import build_runner, loop_step

    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.data import ForgetSpec, load_recorded_data, resolve_forget

    checkpoint = load_checkpoint(model)
    split = augmented_split(load_recorded_data(checkpoint.data), copies)
    forget_set = resolve_forget(ForgetSpec(classes=("8",)), split)
    times: list[float] = []
    started = time.perf_counter()
    if kind.startswith("unlearn"):
        runner, optimizer = build_runner(checkpoint, split, forget_set, kind.split()[1], batch_size=64)
        setup = time.perf_counter() - started
        for _ in range(steps):
            tick = time.perf_counter()
            loop_step(runner, optimizer)
            times.append(time.perf_counter() - tick)
    else:
        from unlearnctl.denoisers import denoiser_for
        from unlearnctl.methods.retrain import training_recipe
        from unlearnctl.training import TrainConfig, fit_denoiser

        recipe = training_recipe(checkpoint)["train"]
        config = TrainConfig(**{**recipe, "steps": steps})
        unet = checkpoint.build_unet("cpu")
        setup = time.perf_counter() - started
        last = [time.perf_counter()]

        def tick(step, _unet):
            times.append(time.perf_counter() - last[0])
            last[0] = time.perf_counter()

        fit_denoiser(denoiser_for(checkpoint, network=unet), forget_set.retain, config, on_step=tick)
    return {"kind": kind, "copies": copies, "train_images": len(split.train), "retain_images": len(forget_set.retain),
            "setup_s": setup, "step_s": statistics.median(times[2:] or times), "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(CLASS_MODEL))
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--steps", type=int, default=12, help="steps timed per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "COPIES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args.steps, args.model)))
        return 0

    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.methods.retrain import training_recipe

    recipe = training_recipe(load_checkpoint(args.model))
    epochs = recipe["train"]["steps"] * recipe["train"]["batch_size"] / recipe["num_train_images"]
    print(f"# scale — {Path(args.model).name}, forget class 8\n# machine: {machine()}")
    scales = [int(s) for s in args.scales.split(",")]
    kinds = args.kinds.split(",")
    results: dict[tuple[str, int], list[dict]] = {}
    loads = [load_average()]
    for _ in range(args.rounds):
        for kind in kinds:
            for copies in scales:
                done = subprocess.run([sys.executable, __file__, "--one", kind, str(copies), "--steps", str(args.steps),
                                       "--model", args.model], capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONPATH": str(ROOT / "bench")})
                results.setdefault((kind, copies), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
                loads.append(load_average())
    rows = []
    for kind in kinds:
        base = statistics.median(r["step_s"] for r in results[(kind, scales[0])])
        for copies in scales:
            runs = results[(kind, copies)]
            step = statistics.median(r["step_s"] for r in runs)
            row = [kind, f"{copies}×", runs[0]["train_images"], statistics.median(r["setup_s"] for r in runs),
                   step * 1000, step / base, max(r["peak_rss_mb"] for r in runs)]
            if kind == "retrain":
                steps_needed = epochs * runs[0]["retain_images"] / recipe["train"]["batch_size"]
                row += [round(steps_needed), steps_needed * step / 60]
            else:
                row += ["", ""]
            rows.append(row)
    print(table(f"Cost against training-set size (median of {args.rounds} rounds, {args.steps} steps each; "
                f"load {loads[0]} … {loads[-1]})",
                ["run", "data", "train images", "set-up s", "ms / step", "step × 1×", "peak RSS MiB",
                 f"retrain steps for {epochs:.0f} epochs", "retrain min"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
