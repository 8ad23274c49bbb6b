"""Model families behind one interface (:class:`~unlearnctl.denoisers.base.Denoiser`).

:func:`denoiser_for` builds the denoiser of a checkpoint. Today every checkpoint holds a pixel-space
``UNet2DModel`` (:class:`~unlearnctl.denoisers.pixel.PixelDenoiser`); latent text-to-image models add a
second family here without touching the methods, the attack or training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unlearnctl.denoisers.base import Denoiser
from unlearnctl.denoisers.pixel import PixelDenoiser
from unlearnctl.runtime import Runtime

if TYPE_CHECKING:
    import torch

    from unlearnctl.checkpoint import Checkpoint

__all__ = ["Denoiser", "PixelDenoiser", "denoiser_for"]


def denoiser_for(checkpoint: "Checkpoint", runtime: Runtime | None = None,
                 network: "torch.nn.Module | None" = None) -> Denoiser:
    """The denoiser of ``checkpoint`` on ``runtime.device`` (its weights loaded; ``network``: use this module instead)."""
    from unlearnctl.diffusion import NoiseSchedule

    runtime = runtime or Runtime()
    if network is None:
        network = checkpoint.build_unet(runtime.device or "cpu")
    return PixelDenoiser(network, NoiseSchedule(checkpoint.scheduler_config), runtime, null_class=checkpoint.null_class)
