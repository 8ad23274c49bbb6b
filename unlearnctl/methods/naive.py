"""Naive deletion — fine-tune on the retain set only (the baseline of the SISS paper, reference ``naive_del``):

    L = L_r = E_{x, c_x ~ D_r} ||ε_θ(γ_t x + σ_t ε, t, c_x) − ε||².

The forget set is never looked at; the model forgets only as fast as fine-tuning overwrites it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from unlearnctl.methods import register_method
from unlearnctl.methods.base import Method, MethodConfig

if TYPE_CHECKING:
    import torch


@dataclass
class NaiveConfig(MethodConfig):
    """No parameters of its own: steps, learning rate and batch size are the loop's."""


@register_method("naive")
class Naive(Method):
    """Naive deletion: the denoising loss on the retain set."""

    Config = NaiveConfig
    summary = "naive deletion: fine-tune on the retain set only"
    defaults = {"steps": 300, "lr": 2e-4, "batch_size": 64, "lr_schedule": "cosine", "ema_decay": 0.0}  # tuned on the small digits model (docs/methods.md)

    order = 70

    def terms(self) -> dict[str, "torch.Tensor"]:
        return {"L_r": self.retain_loss()}

    def objective(self, terms: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        return terms["L_r"]
