"""The CIFAR-10 DDPM architecture on this machine (issue 17): step, sampling and memory figures.

The model is google/ddpm-cifar10-32's UNet2DModel (35.7M parameters; random weights, since only time and
memory are measured), made class-conditional with one class embedding per class (``num_class_embeds`` =
10, no null class: the usual layout of conditional DDPMs), saved by ``DDPMPipeline.save_pretrained`` and
brought in with ``unlearnctl import`` as a user would. The data is a class folder of random 32×32 RGB PNGs
(10 classes × 20 images, numpy noise): contents do not change the cost of a step.

1. Seconds per unlearning step of ``naive`` and ``siss`` at batch 16 (the shared loop's full step, as in
   ``bench/step_times.py``), interleaved round by round; median and the number of steps timed.
2. Seconds per sampled image per denoising step (DDIM, one call of ``--sample-batch`` images).
3. Peak RSS of ``unlearn`` and ``evaluate`` run as commands in fresh processes (``/usr/bin/time``'s maximum
   resident set size). ``evaluate`` samples enough images (``--eval-samples``, default 300) to use the
   batch the tool chooses for this model (273 images per UNet call), with few DDIM steps: peak memory
   depends on the batch, not on the number of steps.

    nice .venv/bin/python bench/cifar_size.py
    nice .venv/bin/python bench/cifar_size.py --rounds 5 --sample-steps 10 --out /tmp/cifar
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, build_runner, fine_tuning_methods, interleaved, load_average, loop_step, machine, ratio_cell, table

CLASSES = 10
CIFAR_UNET = dict(  # google/ddpm-cifar10-32's unet/config.json (architecture keys)
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
)


def make_data(folder: Path, per_class: int, seed: int = 0) -> Path:
    """``folder/<class>/<i>.png``: random 32×32 RGB images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"c{c}" / f"{i}.png")
    return folder


def make_pipeline(folder: Path) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**CIFAR_UNET, num_class_embeds=CLASSES)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return folder


def run_command(args: list[str]) -> tuple[float, float, int]:
    """``python -m unlearnctl ARGS`` in a fresh process (this checkout's code): ``(wall s, peak RSS MiB, exit code)``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "unlearnctl", *args],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.stderr.write(done.stderr[-2000:])
    return wall, int(done.stderr.strip().splitlines()[-1]) / 1024, done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", type=lambda text: [m for m in text.split(",") if m],
                        help="comma-separated methods to time, the first the reference (default: every registered "
                             "fine-tuning method); docs/performance.md ran naive,siss")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of one step per method (after 1 warm-up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sample-batch", type=int, default=16, help="images per sampling call")
    parser.add_argument("--sample-steps", type=int, default=5, help="DDIM steps per sampling call")
    parser.add_argument("--sample-rounds", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=20, help="images per class of the random data set")
    parser.add_argument("--unlearn-steps", type=int, default=3, help="steps of the unlearn commands measured for peak RSS")
    parser.add_argument("--eval-samples", type=int, default=300)
    parser.add_argument("--eval-steps", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder for data, model and outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="unlearnctl-cifar-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"# CIFAR-10 DDPM architecture, outputs in {out}\n# machine: {machine()}", flush=True)

    data = make_data(out / "data", args.per_class)
    make_pipeline(out / "ddpm")
    model = out / "model.safetensors"
    wall, peak, code = run_command(["import", str(out / "ddpm"), "--out", str(model), "--data", str(data)])
    assert code == 0, "import failed"
    import_row = ["import", peak, wall, code, load_average()]

    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.data import ForgetSpec, load_data, resolve_forget
    from unlearnctl.diffusion import sample_images

    checkpoint = load_checkpoint(model)
    parameters = sum(v.numel() for v in checkpoint.state_dict.values())
    print(f"# model: {parameters / 1e6:.1f}M parameters, num_class_embeds {checkpoint.unet_config['num_class_embeds']}, "
          f"null class {checkpoint.null_class}; data {CLASSES} classes × {args.per_class} images 32×32 RGB", flush=True)
    split = load_data(f"folder:{data}")
    forget_set = resolve_forget(ForgetSpec(classes=("c0",)), split)

    # 1) unlearning steps, interleaved
    methods = args.methods or fine_tuning_methods()
    runners = {m: build_runner(checkpoint, split, forget_set, m, batch_size=args.batch_size) for m in methods}
    timed = interleaved({m: (lambda r=r: loop_step(*r)) for m, r in runners.items()}, rounds=args.rounds, reference=methods[0])
    step_rows = [[m, row["median_s"], row["min_s"], ratio_cell(row), args.rounds, args.batch_size] for m, row in timed.items()]
    print(table(f"Unlearning step, CIFAR-10 architecture (median of {args.rounds} interleaved rounds after 1 warm-up; "
                f"load {load_average()})", ["method", "s / step (median)", "s / step (min)", f"× {methods[0]} [95%]", "steps timed", "batch"],
                step_rows), flush=True)
    del runners

    # 2) sampling: s per image per denoising step
    unet = checkpoint.build_unet("cpu").eval()
    labels = torch.arange(args.sample_batch) % CLASSES
    per_image_step = []
    for _ in range(args.sample_rounds + 1):  # the first call warms up
        started = time.perf_counter()
        sample_images(unet, checkpoint.scheduler_config, labels=labels, steps=args.sample_steps, batch_size=args.sample_batch)
        per_image_step.append((time.perf_counter() - started) / (args.sample_batch * args.sample_steps))
    per_image_step = per_image_step[1:]
    print(table(f"Sampling, DDIM, {args.sample_batch} images per call, {args.sample_steps} steps (load {load_average()})",
                ["s / image / step (median)", "calls timed"], [[statistics.median(per_image_step), len(per_image_step)]]), flush=True)
    del unet

    # 3) peak RSS of the commands
    rows = [import_row]
    s = str(args.unlearn_steps)
    for method in methods:
        wall, peak, code = run_command(["unlearn", "--model", str(model), "--method", method, "--forget-class", "c0", "--steps", s,
                                        "--batch-size", str(args.batch_size), "--out", str(out / f"{method}.safetensors"), "-q"])
        rows.append([f"unlearn --method {method} ({s} steps, batch {args.batch_size})", peak, wall, code, load_average()])
        print(f"  {rows[-1][0]}: {peak:.0f} MiB, {wall:.1f} s, exit {code}", flush=True)
    evaluated = out / f"{methods[-1]}.safetensors"
    wall, peak, code = run_command(["evaluate", "--model", str(evaluated), "--num-samples", str(args.eval_samples),
                                    "--steps", str(args.eval_steps), "--json", str(evaluated.with_suffix(".json")), "-q"])
    rows.append([f"evaluate ({args.eval_samples} samples, DDIM {args.eval_steps}, default batch)", peak, wall, code, load_average()])
    print(table("Peak RSS per command, CIFAR-10 architecture (fresh process each)",
                ["command", "peak RSS MiB", "wall s", "exit", "load"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
