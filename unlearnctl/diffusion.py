"""The diffusion core: forward noising, the loss target, the denoising loss, and DDIM/DDPM sampling.

Notation follows SISS: the forward process is ``q(m_t | x) = N(γ_t x, σ_t² I)`` with ``γ_t = sqrt(ᾱ_t)``
and ``σ_t = sqrt(1 - ᾱ_t)``. What the network predicts follows the scheduler's ``prediction_type``:

=================  =====================================  ==========================================
prediction_type    the network's output                   loss target for ``m_t = γ_t x₀ + σ_t ε``
=================  =====================================  ==========================================
``epsilon``        the noise                              ``ε``
``v_prediction``   the velocity (Salimans & Ho, 2022)     ``v = γ_t ε − σ_t x₀``
``sample``         the clean image                        ``x₀``
=================  =====================================  ==========================================

Methods keep their paper symbols (ε_θ and noise targets); :meth:`NoiseSchedule.target` turns any pair of
(x₀, ε, m_t) into the target of the model's own parameterisation, so every loss is the right objective for
every model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from unlearnctl.distributed import gather_rows, rank, sample_rows
from unlearnctl.errors import require
from unlearnctl.progress import ProgressFn, report
from unlearnctl.runtime import Runtime

if TYPE_CHECKING:
    from unlearnctl.denoisers import Denoiser

SAMPLERS = ("ddim", "ddpm")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class NoiseSchedule:
    """``γ_t`` and ``σ_t`` of a diffusers ``DDPMScheduler`` config, as lookup tables."""

    def __init__(self, scheduler_config: dict[str, Any]):
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(scheduler_config)
        alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = check_prediction_type(scheduler.config.get("prediction_type", "epsilon"))
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

    def target(self, t: torch.Tensor, *, m_t: torch.Tensor | None = None, x0: torch.Tensor | None = None,
               eps: torch.Tensor | None = None) -> torch.Tensor:
        """The loss target of this schedule's ``prediction_type`` for ``m_t = γ_t x₀ + σ_t ε``.

        Give any two of ``m_t``, ``x0`` (the clean image the target denoises to) and ``eps`` (the noise);
        the third follows from ``m_t = γ_t x₀ + σ_t ε``. ε-prediction with ``eps`` given returns it
        unchanged; with ``x0`` given, ``(m_t − γ_t x₀)/σ_t``.
        """
        require(sum(v is not None for v in (m_t, x0, eps)) >= 2, "a loss target needs two of m_t, x0 and eps")
        reference = next(v for v in (m_t, x0, eps) if v is not None)
        gamma, sigma = (c.to(reference.device) for c in self.coefficients(t))
        if self.prediction_type == "epsilon" and eps is not None:
            return eps
        if self.prediction_type == "sample" and x0 is not None:
            return x0
        if eps is None:
            eps = (m_t - gamma * x0) / sigma
        if x0 is None:
            x0 = (m_t - sigma * eps) / gamma
        if self.prediction_type == "v_prediction":
            return gamma * eps - sigma * x0
        return eps if self.prediction_type == "epsilon" else x0


def check_prediction_type(prediction_type: str) -> str:
    require(prediction_type in PREDICTION_TYPES,
            f"prediction type {prediction_type!r} is not supported; supported: {', '.join(PREDICTION_TYPES)}")
    return prediction_type


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||prediction − target||²`` averaged over pixels: one value per sample, shape ``[B]``."""
    return (prediction - target).pow(2).flatten(1).mean(dim=1)


def denoising_loss(
    denoiser: "Denoiser",
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The DDPM loss per sample (shape ``[B]``) at random timesteps and noise, target by ``prediction_type``.

    In a multi-process run (``denoiser.runtime.shard``) ``x`` is the global batch: the randomness of all of
    it is drawn and this process's rows are scored (shape ``[B / processes]``).
    """
    runtime = denoiser.runtime
    t = denoiser.schedule.random_timesteps(x.shape[0], generator)
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    x, labels, t, noise = runtime.take(x), runtime.take(labels), runtime.take(t), runtime.take(noise)
    m_t = denoiser.add_noise(x, noise, t)
    return per_sample_mse(denoiser.predict(m_t, t, labels), denoiser.target(t, x0=x, eps=noise))


def _make_sampler(scheduler_config: dict[str, Any], sampler: str, steps: int):
    from diffusers import DDIMScheduler, DDPMScheduler

    require(sampler in SAMPLERS, f"unknown sampler {sampler!r}; choose {' or '.join(SAMPLERS)}")
    limit = int(scheduler_config.get("num_train_timesteps", 1000))
    require(1 <= steps <= limit, f"sampling steps must be between 1 and {limit}, got {steps}")
    scheduler = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    return scheduler


# A class-conditional model with one class embedding per class (no null class) has no unconditional branch.
NO_NULL_CLASS_GUIDANCE = "this model has no null class, so classifier-free guidance is unavailable; use --guidance 1"


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
    precision: str = "fp32",
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate images in ``[-1, 1]``, shape ``[N, C, H, W]``.

    Args:
        unet: the denoiser; put it in eval mode before calling.
        scheduler_config: the training noise schedule (checkpoint metadata).
        num_images: how many images (unconditional models).
        labels: one class per image (conditional models); sets ``N``.
        null_class: the null class index, needed when ``guidance != 1`` (``None``: the model has none).
        steps: sampler steps (DDIM default 50).
        sampler: ``ddim`` (deterministic, η = 0) or ``ddpm`` (ancestral).
        guidance: classifier-free guidance scale ``w``: ``ε = ε_∅ + w (ε_c − ε_∅)``; 1 = no guidance.
        seed: seeds the initial noise (drawn once for all ``N``) and DDPM's per-step noise.
        batch_size: images per UNet call.
        precision: autocast of the UNet calls (``fp32``, ``bf16``, ``fp16`` on CUDA).
        noise: the initial noise, ``[N, C, H, W]``, instead of the seeded draw (e.g. some rows of a larger
            seeded draw, to regenerate part of an evaluation's samples exactly with DDIM).
    """
    require((num_images is None) != (labels is None), "give either num_images (unconditional) or labels (conditional)")
    total = int(num_images if labels is None else labels.shape[0])
    require(total >= 1, f"number of images must be at least 1, got {total}")
    require(batch_size >= 1, f"batch size must be at least 1, got {batch_size}")
    guided = labels is not None and guidance != 1.0
    require(not guided or null_class is not None, NO_NULL_CLASS_GUIDANCE)
    device = next(unet.parameters()).device
    from unlearnctl.denoisers import PixelDenoiser

    model = PixelDenoiser(unet, None, Runtime.create(device, precision), null_class)  # sampling needs no training schedule
    config = unet.config
    generator = torch.Generator().manual_seed(seed)
    shape = (total, config.in_channels, config.sample_size, config.sample_size)
    if noise is None:
        noise = torch.randn(shape, generator=generator)
    require(tuple(noise.shape) == shape, f"initial noise has shape {tuple(noise.shape)}, expected {shape}")
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
            eps = _guided_output(model, x, t, batch_labels, guidance if guided else 1.0)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        images.append(x.clamp(-1, 1).cpu())
        report(progress, "sample", done + 1, len(batches), images=end - first)
    return gather_rows(torch.cat(images), total)


def _guided_output(model: "Denoiser", x, t, labels, guidance):
    """The model output, with classifier-free guidance ``out_∅ + w (out_c − out_∅)`` when ``w ≠ 1`` (linear in
    every parameterisation, so it holds for ε, v and x₀ alike)."""
    t_batch = t.expand(x.shape[0]).to(x.device)
    if guidance == 1.0:
        return model.predict(x, t_batch, labels)
    both = torch.cat([labels, model.null_condition(labels)])
    out = model.predict(torch.cat([x, x]), torch.cat([t_batch, t_batch]), both)
    out_cond, out_null = out.chunk(2)
    return out_null + guidance * (out_cond - out_null)


TEXT_SAMPLERS = ("pipeline", "ddim", "ddpm")  # "pipeline": the sampler the text-to-image pipeline came with


def text_sampler(components: dict[str, Any], sampler: str, steps: int):
    """A fresh sampler for a text-to-image model: the pipeline's own scheduler, or DDIM/DDPM on its noise schedule
    (built from the pipeline scheduler's config, so ``steps_offset`` and ``set_alpha_to_one`` carry over)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from unlearnctl.checkpoint.components import build_scheduler

    require(sampler in TEXT_SAMPLERS, f"unknown sampler {sampler!r}; choose {', '.join(TEXT_SAMPLERS)}")
    config = components["scheduler"]["config"]
    limit = int(config.get("num_train_timesteps", 1000))
    require(1 <= steps <= limit, f"sampling steps must be between 1 and {limit}, got {steps}")
    if sampler == "pipeline":
        scheduler = build_scheduler(components)
    else:
        scheduler = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config({**config, "clip_sample": False})
    scheduler.set_timesteps(steps)
    return scheduler


@torch.inference_mode()
def sample_text_images(
    denoiser: "Denoiser",
    components: dict[str, Any],
    prompts: torch.Tensor,
    *,
    negative: torch.Tensor | None = None,
    steps: int = 50,
    sampler: str = "pipeline",
    guidance: float = 7.5,
    seed: int = 0,
    batch_size: int = 500,
    progress: ProgressFn = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images in ``[-1, 1]`` for prompt embeddings ``[N, L, D]``, as ``StableDiffusionPipeline`` draws them.

    The initial latents are drawn once for all ``N`` from ``seed`` (the pipeline's ``randn_tensor`` with a CPU
    generator), scaled by the sampler's ``init_noise_sigma``; each step scales the model input, and with
    ``guidance > 1`` runs the unconditional branch on ``negative`` (default: the empty prompt) and mixes
    ``out_neg + w (out_c − out_neg)``; the latents are decoded by the VAE. Same seed, steps, sampler and
    prompts give the pipeline's images (up to float rounding of batching). ``noise``: these initial latents
    ``[N, C, h, w]`` instead (rows of a larger draw: a probe generating part of an evaluation's samples).
    """
    total = int(prompts.shape[0])
    require(total >= 1, "give at least one prompt")
    require(batch_size >= 1, f"batch size must be at least 1, got {batch_size}")
    device = denoiser.device
    config = denoiser.network.config
    generator = torch.Generator().manual_seed(seed)
    if noise is None:
        noise = torch.randn((total, config.in_channels, config.sample_size, config.sample_size), generator=generator)
    require(noise.shape[0] == total, f"{noise.shape[0]} initial latents for {total} prompts")
    negative = denoiser.null_condition(prompts) if negative is None else negative
    images = [noise[:0, :0]]
    batches = list(range(0, total, batch_size))
    for done, start in enumerate(batches):
        end = min(start + batch_size, total)
        scheduler = text_sampler(components, sampler, steps)
        latents = noise[start:end].to(device) * scheduler.init_noise_sigma
        cond, uncond = prompts[start:end].to(device), negative[start:end].to(device)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            t_batch = t.expand(latents.shape[0]).to(device)
            if guidance > 1.0:
                out_null, out_cond = denoiser.predict(torch.cat([model_input] * 2), torch.cat([t_batch] * 2),
                                                      torch.cat([uncond, cond])).chunk(2)
                out = out_null + guidance * (out_cond - out_null)
            else:
                out = denoiser.predict(model_input, t_batch, cond)
            latents = scheduler.step(out, t, latents, **_step_kwargs(scheduler, generator)).prev_sample
        images.append(denoiser.decode(latents).clamp(-1, 1).cpu())
        report(progress, "sample", done + 1, len(batches), images=end)
    return torch.cat([image for image in images if image.numel()])


def _step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    """``eta = 0`` and the generator for the samplers that take them (the pipeline's ``prepare_extra_step_kwargs``)."""
    import inspect

    accepted = set(inspect.signature(scheduler.step).parameters)
    return {key: value for key, value in (("eta", 0.0), ("generator", generator)) if key in accepted}


def balanced_labels(class_ids: list[int], per_class: int) -> torch.Tensor:
    """``per_class`` labels for each class in ``class_ids``, grouped by class."""
    return torch.tensor(class_ids, dtype=torch.long).repeat_interleave(per_class)
