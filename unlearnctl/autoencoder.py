"""A tiny KL autoencoder (diffusers ``AutoencoderKL``) for the embedded 8×8 digits: the latent space of the
tiny text-to-image default.

Images ``[B, 1, 8, 8]`` in ``[-1, 1]`` (unlearnctl's convention, :mod:`unlearnctl.data`) encode to latents
``[B, 4, 4, 4]``. Training follows the LDM autoencoder (Rombach et al. 2022, §3 and App. G) without its
perceptual and adversarial terms, which mean nothing at 8×8::

    L = ‖x − D(z)‖² / P  +  β · KL(q(z|x) ‖ N(0, I)) / P,   z ~ q(z|x),   β = 1e-6

with both terms per pixel (``P`` = pixels per image), so β weighs them as LDM's summed losses do.

Stable Diffusion's latent convention (diffusers): the diffusion model sees
``latents = vae.encode(x).latent_dist.sample() * scaling_factor`` and images come back as
``vae.decode(latents / scaling_factor).sample``, where ``scaling_factor = 1 / std(latents)`` on the training
data (SD 1.x: 0.18215) so the diffusion model's inputs have unit variance. :func:`train_autoencoder` measures
that std and writes ``scaling_factor`` into the returned model's config.

Defaults (measured by ``bench/autoencoder.py`` on the digits, 2 shared CPU cores): channels (16, 32) and 600 steps
of 32 images. Channels (32, 64) cost about twice the time per step and at 300 steps (the same time) reconstruct
worse (held-out MSE 0.029 against 0.012).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from unlearnctl.errors import require
from unlearnctl.metrics.intervals import t_interval
from unlearnctl.progress import ProgressFn, report

KL_WEIGHT = 1e-6  # β: LDM's KL weight for its f=4..16 KL autoencoders


def tiny_autoencoder_config(
    channels: int = 1,
    *,
    sample_size: int = 8,  # image side in pixels
    block_out_channels: tuple[int, ...] = (16, 32),  # one encoder/decoder block each; all but the last halve the side
    layers_per_block: int = 1,  # ResNet layers per block
    latent_channels: int = 4,  # channels of z (SD: 4)
    norm_num_groups: int = 8,  # GroupNorm groups; must divide every block's channels
    scaling_factor: float = 1.0,  # set to 1/std(latents) after training (train_autoencoder does)
) -> dict[str, Any]:
    """``AutoencoderKL`` arguments for ``channels``-channel ``sample_size``² images: with the defaults, 8×8 → 4×4×4."""
    require(channels in (1, 3), f"autoencoder channels must be 1 or 3, got {channels}")
    require(all(c % norm_num_groups == 0 for c in block_out_channels),
            f"norm_num_groups {norm_num_groups} must divide every block's channels {list(block_out_channels)}")
    factor = 2 ** (len(block_out_channels) - 1)
    require(sample_size % factor == 0, f"sample_size {sample_size} must be divisible by {factor} ({len(block_out_channels)} blocks)")
    return dict(
        in_channels=channels, out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


@dataclass
class AutoencoderFit:
    """A trained autoencoder and what was measured on it.

    Attributes:
        model: the ``AutoencoderKL``, in eval mode, with ``config.scaling_factor = 1 / latent_std``.
        heldout_mse: mean over held-out images of each image's reconstruction MSE (``[-1, 1]`` units, decoded
            from the posterior mean).
        heldout_mse_ci95: 95% t-interval of that mean (over ``num_heldout`` images).
        num_heldout: held-out images measured.
        latent_std: std of ``latent_dist.sample()`` over every element of the training images' latents.
        untrained_mse: the same held-out MSE before training (same initialisation), for comparison.
        seconds: wall-clock time of the training loop.
    """

    model: Any
    heldout_mse: float
    heldout_mse_ci95: tuple[float, float]
    num_heldout: int
    latent_std: float
    untrained_mse: float
    seconds: float


@torch.no_grad()
def reconstruction_errors(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Per-image MSE ``[N]`` of ``decode(mean of q(z|x))`` against ``images`` (``[N, C, H, W]`` in ``[-1, 1]``)."""
    errors = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        x_hat = model.decode(model.encode(x).latent_dist.mode()).sample
        errors.append(((x_hat - x) ** 2).flatten(1).mean(1))
    return torch.cat(errors)


def train_autoencoder(
    images: torch.Tensor,
    config: dict[str, Any] | None = None,
    *,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    heldout: torch.Tensor | None = None,
    kl_weight: float = KL_WEIGHT,
    progress: ProgressFn = None,
) -> AutoencoderFit:
    """Train an ``AutoencoderKL`` on ``images`` (``[N, C, H, W]`` in ``[-1, 1]``) with Adam (see the module doc).

    Args:
        images: training images.
        config: ``AutoencoderKL`` arguments (default: :func:`tiny_autoencoder_config` for the images' channels and size).
        steps: optimizer steps; batch_size: images per step; lr: Adam's learning rate (cosine-decayed to 10%).
        seed: seed of the initialisation, batches and posterior samples.
        heldout: images to measure reconstruction on; ``None`` holds out 10% of ``images`` (chosen by ``seed``).
        kl_weight: β of the KL term.
        progress: called after every step with ``loss``.
    """
    from diffusers import AutoencoderKL

    require(images.ndim == 4 and len(images) >= 2, f"autoencoder images must be N×C×H×W with N >= 2, got shape {tuple(images.shape)}")
    require(steps >= 1 and batch_size >= 1 and lr > 0, f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    config = dict(config or tiny_autoencoder_config(images.shape[1], sample_size=images.shape[-1]))
    require(config["in_channels"] == images.shape[1] and config["sample_size"] == images.shape[-1],
            f"images are {images.shape[1]}×{images.shape[-2]}×{images.shape[-1]}, the autoencoder config "
            f"{config['in_channels']}×{config['sample_size']}×{config['sample_size']}")
    generator = torch.Generator().manual_seed(seed)
    if heldout is None:
        order = torch.randperm(len(images), generator=generator)
        cut = max(1, len(images) // 10)
        images, heldout = images[order[cut:]], images[order[:cut]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKL(**config)
        model.eval()
        untrained = float(reconstruction_errors(model, heldout).mean())
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
        pixels = images[0].numel()
        start = time.perf_counter()
        for step in range(steps):
            x = images[torch.randint(len(images), (min(batch_size, len(images)),), generator=generator)]
            posterior = model.encode(x).latent_dist
            x_hat = model.decode(posterior.sample(generator)).sample
            reconstruction = ((x_hat - x) ** 2).mean()  # per pixel
            kl = posterior.kl().mean() / pixels  # KL per image, summed over latent elements, per pixel
            loss = reconstruction + kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            report(progress, "autoencoder", step + 1, steps, loss=loss.item())
        seconds = time.perf_counter() - start
        model.eval()
        errors = reconstruction_errors(model, heldout)
        with torch.no_grad():
            latents = torch.cat([model.encode(images[i:i + 256]).latent_dist.sample(generator)
                                 for i in range(0, len(images), 256)])
    latent_std = float(latents.std())
    model.register_to_config(scaling_factor=1.0 / latent_std)
    if len(errors) >= 2:
        _, low, high = t_interval(errors.numpy())
    else:
        low = high = float("nan")
    return AutoencoderFit(model, float(errors.mean()), (low, high), len(errors), latent_std, untrained, seconds)
