"""Pixel-space models: a diffusers ``UNet2DModel``, unconditional or class-conditional.

The diffusion runs on the images themselves (encode/decode are the identity). Class-conditional models
take ``class_labels``; the null class of classifier-free guidance is the last class embedding when the
model was trained with one (``num_class_embeds`` = classes + 1, as ``unlearnctl train`` builds them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unlearnctl.denoisers.base import Denoiser

if TYPE_CHECKING:
    import torch


class PixelDenoiser(Denoiser):
    """A ``UNet2DModel`` on pixels. ``null_class``: the guidance class index, ``None`` when there is none."""

    def __init__(self, network, schedule, runtime=None, null_class: int | None = None):
        super().__init__(network, schedule, runtime)
        self.null_class = null_class

    def condition(self, c: "torch.Tensor | None") -> dict[str, Any]:
        return {"class_labels": None if c is None else c.to(self.device_of(c))}

    def null_condition(self, like: "torch.Tensor | None") -> "torch.Tensor | None":
        import torch

        if like is None or self.null_class is None:
            return None
        return torch.full_like(like, self.null_class)

    def device_of(self, c: "torch.Tensor") -> "torch.device":
        return self.runtime.device or c.device
