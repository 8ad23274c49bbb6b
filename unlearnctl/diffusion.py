"""The diffusion core: forward noising, the denoising loss, and DDIM/DDPM sampling.

Notation follows SISS (DESIGN §2): the forward process is ``q(m_t | x) = N(γ_t x, σ_t² I)`` with
``γ_t = sqrt(ᾱ_t)`` and ``σ_t = sqrt(1 - ᾱ_t)``; the model predicts the noise ``ε = (m_t − γ_t x) / σ_t``.
"""

from __future__ import annotations

from typing import Any

import torch

from unlearnctl.distributed import autocast, current_shard, gather_rows, rank, sample_rows
from unlearnctl.errors import require
from unlearnctl.progress import ProgressFn, report

SAMPLERS = ("ddim", "ddpm")


class NoiseSchedule:
    """``γ_t`` and ``σ_t`` of a diffusers ``DDPMScheduler`` config, as lookup tables."""

    def __init__(self, scheduler_config: dict[str, Any]):
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(scheduler_config)
        alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.gamma = alphas_cumprod.sqrt().float()  # γ_t, shape [T]
        self.sigma = (1.0 - alphas_cumprod).sqrt().float()  # σ_t, shape [T]

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``γ_t, σ_t`` shaped ``[B, 1, 1, 1]`` for broadcasting over images."""
        t = t.cpu()
        return self.gamma[t].view(-1, 1, 1, 1), self.sigma[t].view(-1, 1, 1, 1)

    def add_noise(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``m_t = γ_t x + σ_t ε``."""
        gamma, sigma = (c.to(x.device) for c in self.coefficients(t))
        return gamma * x + sigma * noise

    def noise_target(self, m_t: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise that maps ``x`` to ``m_t``: ``(m_t − γ_t x) / σ_t``."""
        gamma, sigma = (c.to(x.device) for c in self.coefficients(t))
        return (m_t - gamma * x) / sigma

    def random_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)


def predict_noise(unet: torch.nn.Module, m_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``ε_θ(m_t, t[, c])`` (float32; the forward runs at ``--precision``, see :mod:`unlearnctl.distributed`)."""
    with autocast(m_t.device):
        eps = unet(m_t, t.to(m_t.device), class_labels=None if labels is None else labels.to(m_t.device)).sample
    return eps.float()


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||prediction − target||²`` averaged over pixels: one value per sample, shape ``[B]``."""
    return (prediction - target).pow(2).flatten(1).mean(dim=1)


def denoising_loss(
    unet: torch.nn.Module,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The DDPM ε-prediction loss per sample (shape ``[B]``) at random timesteps and noise.

    Inside :func:`unlearnctl.distributed.data_parallel` ``x`` is the global batch: the randomness of all of
    it is drawn and this process's rows are scored (shape ``[B / processes]``).
    """
    t = schedule.random_timesteps(x.shape[0], generator)
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    shard = current_shard()
    x, labels, t, noise = shard.take(x), shard.take(labels), shard.take(t), shard.take(noise)
    m_t = schedule.add_noise(x, noise, t)
    return per_sample_mse(predict_noise(unet, m_t, t, labels), noise)


def _make_sampler(scheduler_config: dict[str, Any], sampler: str, steps: int):
    from diffusers import DDIMScheduler, DDPMScheduler

    require(sampler in SAMPLERS, f"unknown sampler {sampler!r}; choose {' or '.join(SAMPLERS)}")
    limit = int(scheduler_config.get("num_train_timesteps", 1000))
    require(1 <= steps <= limit, f"sampling steps must be between 1 and {limit}, got {steps}")
    scheduler = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    return scheduler


@torch.inference_mode()
def sample_images(
    unet: torch.nn.Module,
    scheduler_config: dict[str, Any],
    *,
    num_images: int | None = None,
    labels: torch.Tensor | None = None,
    null_class: int | None = None,
    steps: int = 50,
    sampler: str = "ddim",
    guidance: float = 1.0,
    seed: int = 0,
    batch_size: int = 500,
    progress: ProgressFn = None,
) -> torch.Tensor:
    """Generate images in ``[-1, 1]``, shape ``[N, C, H, W]``.

    Args:
        unet: the denoiser; put it in eval mode before calling.
        scheduler_config: the training noise schedule (checkpoint metadata).
        num_images: how many images (unconditional models).
        labels: one class per image (conditional models); sets ``N``.
        null_class: the null class index, needed when ``guidance != 1``.
        steps: sampler steps (DDIM default 50).
        sampler: ``ddim`` (deterministic, η = 0) or ``ddpm`` (ancestral).
        guidance: classifier-free guidance scale ``w``: ``ε = ε_∅ + w (ε_c − ε_∅)``; 1 = no guidance.
        seed: seeds the initial noise (drawn once for all ``N``) and DDPM's per-step noise.
        batch_size: images per UNet call.
    """
    require((num_images is None) != (labels is None), "give either num_images (unconditional) or labels (conditional)")
    total = int(num_images if labels is None else labels.shape[0])
    require(total >= 1, f"number of images must be at least 1, got {total}")
    require(batch_size >= 1, f"batch size must be at least 1, got {batch_size}")
    guided = labels is not None and guidance != 1.0
    require(not guided or null_class is not None, "guidance needs a class-conditional model with a null class")
    device = next(unet.parameters()).device
    config = unet.config
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((total, config.in_channels, config.sample_size, config.sample_size), generator=generator)
    first, stop = sample_rows(total)  # multi-process runs: this process's share (all of it otherwise)
    if (first, stop) != (0, total):
        generator = torch.Generator().manual_seed(seed + 7919 * (rank() + 1))  # DDPM step noise per process
    batches = list(range(first, stop, batch_size))
    images = [noise[:0]]
    for done, start in enumerate(batches):
        end = min(start + batch_size, stop)
        x = noise[start:end].to(device)
        batch_labels = None if labels is None else labels[start:end].to(device)
        scheduler = _make_sampler(scheduler_config, sampler, steps)
        for t in scheduler.timesteps:
            eps = _guided_noise(unet, x, t, batch_labels, null_class, guidance if guided else 1.0)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        images.append(x.clamp(-1, 1).cpu())
        report(progress, "sample", done + 1, len(batches), images=end - first)
    return gather_rows(torch.cat(images), total)


def _guided_noise(unet, x, t, labels, null_class, guidance):
    t_batch = t.expand(x.shape[0]).to(x.device)
    if guidance == 1.0:
        with autocast(x.device):
            return unet(x, t_batch, class_labels=labels).sample.float()
    both = torch.cat([labels, torch.full_like(labels, null_class)])
    with autocast(x.device):
        eps = unet(torch.cat([x, x]), torch.cat([t_batch, t_batch]), class_labels=both).sample.float()
    eps_cond, eps_null = eps.chunk(2)
    return eps_null + guidance * (eps_cond - eps_null)


def balanced_labels(class_ids: list[int], per_class: int) -> torch.Tensor:
    """``per_class`` labels for each class in ``class_ids``, grouped by class."""
    return torch.tensor(class_ids, dtype=torch.long).repeat_interleave(per_class)
