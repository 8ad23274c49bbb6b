"""Model families behind one interface (:class:`~unlearnctl.denoisers.base.Denoiser`).

:func:`denoiser_for` builds the denoiser of a checkpoint: a pixel-space ``UNet2DModel``
(:class:`~unlearnctl.denoisers.pixel.PixelDenoiser`) or a latent text-to-image ``UNet2DConditionModel`` with
its frozen VAE, text encoder and tokenizer (:class:`~unlearnctl.denoisers.latent.LatentTextDenoiser`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unlearnctl.denoisers.base import Denoiser
from unlearnctl.denoisers.latent import LatentTextDenoiser
from unlearnctl.denoisers.pixel import PixelDenoiser
from unlearnctl.runtime import Runtime

if TYPE_CHECKING:
    import torch

    from unlearnctl.checkpoint import Checkpoint

__all__ = ["Denoiser", "LatentTextDenoiser", "PixelDenoiser", "denoiser_for", "frozen_dtype"]


def denoiser_for(checkpoint: "Checkpoint", runtime: Runtime | None = None,
                 network: "torch.nn.Module | None" = None) -> Denoiser:
    """The denoiser of ``checkpoint`` on ``runtime.device`` (its weights loaded; ``network``: use this module instead)."""
    from unlearnctl.diffusion import NoiseSchedule

    runtime = runtime or Runtime()
    if network is None:
        network = checkpoint.build_unet(runtime.device or "cpu")
    schedule = NoiseSchedule(checkpoint.scheduler_config)
    if not checkpoint.text_conditional:
        return PixelDenoiser(network, schedule, runtime, null_class=checkpoint.null_class)
    from unlearnctl.checkpoint.components import build_component, load_tokenizer, scaling_factor

    device, dtype = runtime.device or "cpu", frozen_dtype(runtime)
    return LatentTextDenoiser(
        network, schedule, runtime,
        vae=build_component(checkpoint.components, checkpoint.frozen, "vae", device, dtype),
        text_encoder=build_component(checkpoint.components, checkpoint.frozen, "text_encoder", device, dtype),
        tokenizer=load_tokenizer(checkpoint.frozen), scaling_factor=scaling_factor(checkpoint.components),
    )


def frozen_dtype(runtime: Runtime) -> "torch.dtype":
    """The frozen components' dtype: half precision on a GPU run at fp16/bf16 (they are never trained, so their
    weights need no fp32 master copy), fp32 otherwise (CPU half-precision convolutions are slow or missing)."""
    import torch

    device = runtime.device
    if device is not None and torch.device(device).type == "cuda" and runtime.precision in ("fp16", "bf16"):
        return torch.float16 if runtime.precision == "fp16" else torch.bfloat16
    return torch.float32
