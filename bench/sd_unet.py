"""One training step and one sampling step of the Stable Diffusion 1.5 UNet architecture on this machine.

Random weights (the architecture's config, nothing downloaded), 64×64×4 latents (512 px images), batch 1,
77×768 text embeddings. Each case runs in a fresh process (``--case``) so its peak RSS is its own:

* ``sample``: one UNet forward pass under ``inference_mode`` (one denoising step without guidance);
* ``train-all``: forward, backward and an AdamW step over all 860M parameters;
* ``train-all-ckpt``: the same with gradient checkpointing (``unet.enable_gradient_checkpointing()``);
* ``train-xattn``: only the cross-attention layers train (ESD-x; :data:`unlearnctl.denoisers.latent.TRAINABLE`);
* ``train-xattn-ckpt``: cross-attention only, with gradient checkpointing.

Each case times ``--repeats`` steps after one warm-up step and prints the median seconds and the process's
peak RSS. ``python bench/sd_unet.py`` runs every case side by side and prints the table with ratios to
``train-all``. On a CUDA machine ``--device cuda --size 64`` measures the same at 512 px with peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from common import ROOT, load_average, machine, table

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "act_fn": "silu",
}
CASES = ("sample", "train-all", "train-all-ckpt", "train-xattn", "train-xattn-ckpt")


def run_case(case: str, repeats: int, device: str, size: int) -> dict:
    from unlearnctl.checkpoint import build_unet
    from unlearnctl.denoisers.latent import select_trainable

    torch.manual_seed(0)
    unet = build_unet({**SD15_UNET, "sample_size": size}).to(device)
    latents = torch.randn(1, 4, size, size, device=device)
    text = torch.randn(1, 77, 768, device=device)
    t = torch.tensor([500], device=device)
    if case == "sample":
        unet.eval()

        def step():
            with torch.inference_mode():
                unet(latents, t, encoder_hidden_states=text)
    else:
        trained = select_trainable(unet, "cross-attention" if "xattn" in case else "all")
        if case.endswith("ckpt"):
            unet.enable_gradient_checkpointing()
        unet.train()
        optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-5)

        def step():
            loss = (unet(latents, t, encoder_hidden_states=text).sample - latents).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    times = []
    for i in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first step warms up (allocations, kernels)
            times.append(time.perf_counter() - started)
    result = {"case": case, "seconds": statistics.median(times), "repeats": repeats,
              "parameters": sum(p.numel() for p in unet.parameters()),
              "trained": 0 if case == "sample" else trained}
    if device.startswith("cuda"):
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CASES, help="run one case in this process and print its JSON")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px images)")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.repeats, args.device, args.size)))
        return 0
    print(machine())
    rows = []
    for case in CASES:
        command = ["/usr/bin/time", "-f", "%M", sys.executable, str(ROOT / "bench/sd_unet.py"), "--case", case,
                   "--repeats", str(args.repeats), "--device", args.device, "--size", str(args.size)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr[-2000:])
            rows.append([case, "failed", "", "", "", ""])
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["peak_rss_gib"] = int(done.stderr.strip().splitlines()[-1]) / 2**20
        rows.append(result)
        print(json.dumps(result), flush=True)
    reference = next((r for r in rows if isinstance(r, dict) and r["case"] == "train-all"), None)
    print(table(f"SD-1.5 UNet, {args.size}×{args.size} latents, batch 1, {args.device} (median of {args.repeats} steps after a warm-up; load {load_average()})",
                ["case", "s/step", "× train-all", "peak RSS GiB", "trained params", *(["peak GPU GiB"] if args.device != "cpu" else [])],
                [[r["case"], f"{r['seconds']:.2f}", f"{r['seconds'] / reference['seconds']:.2f}" if reference else "",
                  f"{r['peak_rss_gib']:.1f}", f"{r['trained'] / 1e6:.1f}M",
                  *([f"{r.get('peak_gpu_gib', 0):.1f}"] if args.device != "cpu" else [])]
                 if isinstance(r, dict) else r for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
