"""Sampling throughput (images/s): our sampler against diffusers' own ``DDIMPipeline``, and what each
CPU knob gives.

Same unconditional model, same DDIM steps, same batch, measured side by side (interleaved rounds):

* ``diffusers DDIMPipeline`` — ``DDIMPipeline(unet, DDIMScheduler)(batch_size, num_inference_steps, eta=0)``;
* ``ours`` — :func:`unlearnctl.diffusion.sample_images` (the default path of ``sample``/``evaluate``);
* ``ours, no_grad instead of inference_mode`` — what ``torch.inference_mode`` gives;
* ``ours, channels_last`` — the UNet in ``channels_last`` memory format;
* ``ours, bf16 autocast`` — ``--precision bf16``;
* ``ours, torch.compile`` — ``torch.compile(unet)`` (compile time reported apart, optional: ``--compile``);
* a batch-size sweep of ``ours``.

    nice -n 5 .venv/bin/python bench/sampling_throughput.py                    # canary model if present
    nice -n 5 .venv/bin/python bench/sampling_throughput.py --images 256 --steps 50 --compile
"""

from __future__ import annotations

import argparse
import time

import torch

from common import CANARY_MODEL, interleaved, load_average, machine, peak_rss_mb, ratio_cell, table


def load_unconditional(path: str):
    """The shared unconditional base, or (if it is not there yet) a ``small`` unconditional UNet with
    random weights: throughput does not depend on the weights."""
    from pathlib import Path

    from unlearnctl.checkpoint import build_unet, default_scheduler, load_checkpoint, plain_config
    from unlearnctl.models import unet_config

    if Path(path).is_file():
        checkpoint = load_checkpoint(path)
        return checkpoint.build_unet("cpu").eval(), checkpoint.scheduler_config, Path(path).name
    torch.manual_seed(0)
    config = unet_config("small", resolution=8, channels=1, num_classes=None)
    return build_unet(config).eval(), plain_config(default_scheduler().config), "small unconditional UNet (random weights)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(CANARY_MODEL))
    parser.add_argument("--images", type=int, default=256, help="images per measurement (= the batch)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds (the batch sweep runs half as many)")
    parser.add_argument("--batches", default="16,64,256,1024", help="batch sizes of the sweep")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(unet) (slow to compile on CPU)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="skip the bf16 row (on a CPU without AVX-512-BF16 or AMX it is an order of magnitude slower)")
    args = parser.parse_args(argv)

    from diffusers import DDIMPipeline, DDIMScheduler

    from unlearnctl.diffusion import sample_images

    unet, scheduler_config, name = load_unconditional(args.model)
    n, steps = args.images, args.steps
    print(f"# sampling throughput — {name}, DDIM {steps} steps, {n} images per call\n# machine: {machine()}")

    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    plain = sample_images.__wrapped__  # the function without its inference_mode decorator

    def ours(model=unet, batch=n, wrapper=torch.inference_mode, precision="fp32"):
        with wrapper():
            plain(model, scheduler_config, num_images=n, steps=steps, seed=0, batch_size=batch, precision=precision)

    channels_last = load_unconditional(args.model)[0].to(memory_format=torch.channels_last)
    cases = {
        "diffusers DDIMPipeline": lambda: pipe(batch_size=n, num_inference_steps=steps, eta=0.0,
                                               generator=torch.Generator().manual_seed(0), output_type="np"),
        "ours": lambda: ours(),
        "ours, no_grad instead of inference_mode": lambda: ours(wrapper=torch.no_grad),
        "ours, channels_last": lambda: ours(model=channels_last),
    }
    if args.bf16:
        cases["ours, bf16 autocast (--precision bf16)"] = lambda: ours(precision="bf16")
    compile_s = None
    if args.compile:
        compiled = torch.compile(load_unconditional(args.model)[0])
        started = time.perf_counter()
        ours(model=compiled)  # compiles for this batch shape
        compile_s = time.perf_counter() - started
        cases["ours, torch.compile"] = lambda: ours(model=compiled)
    timing = interleaved(cases, args.rounds, reference="diffusers DDIMPipeline")
    rows = [[k, n / v["median_s"], ratio_cell(v, speedup=True)] for k, v in timing.items()]
    print(table(f"Sampling throughput, batch {n} (median of {args.rounds} interleaved rounds; load {load_average()})",
                ["sampler", "images / s", "× DDIMPipeline [95%]"], rows))
    if compile_s is not None:
        print(f"\ntorch.compile: first call (compile + sample) {compile_s:.0f} s")

    # agreement: the same images as the pipeline (DDIM, η = 0, same initial noise)
    with torch.inference_mode():
        ours_images = sample_images(unet, scheduler_config, num_images=8, steps=steps, seed=0)
        noise = torch.randn((8, 1, unet.config.sample_size, unet.config.sample_size), generator=torch.Generator().manual_seed(0))
        scheduler = DDIMScheduler.from_config(scheduler_config)
        scheduler.set_timesteps(steps)
        x = noise
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    print(f"max |ours − a plain DDIMScheduler loop| on 8 images: {float((ours_images - x.clamp(-1, 1)).abs().max()):.2e}")

    batches = [int(b) for b in args.batches.split(",") if b]
    total = max(batches)
    sweep = {b: (lambda b=b: plain_total(plain, unet, scheduler_config, total, steps, b)) for b in batches}
    timing = interleaved(sweep, max(2, args.rounds // 2), reference=batches[0])
    rows = [[b, total / v["median_s"], ratio_cell(v, speedup=True)] for b, v in timing.items()]
    print(table(f"Batch size of ours ({total} images per measurement, --sample-batch-size; load {load_average()})",
                ["batch", "images / s", f"× batch {batches[0]} [95%]"], rows))
    print(f"\npeak RSS of this benchmark: {peak_rss_mb():.0f} MiB")
    return 0


def plain_total(plain, unet, scheduler_config, total, steps, batch):
    with torch.inference_mode():
        plain(unet, scheduler_config, num_images=total, steps=steps, seed=0, batch_size=batch)


if __name__ == "__main__":
    raise SystemExit(main())
