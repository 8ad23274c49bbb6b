"""NegGrad — gradient ascent on the forget set, the baseline of the SISS paper (Alberti et al., ICLR 2025;
reference ``simple_neg_del``), optionally with a retain term:

    L = −L_f + α · L_r,   L_f = E_{a ~ D_f} ||ε_θ(γ_t a + σ_t ε, t, c_a) − ε||².

Gradient ascent is unbounded: the forget loss grows until the model generates noise. A divergence guard
stops the run (keeping the weights before the offending update) once the moving average of L_f exceeds
``max_forget_loss``; the default 1.0 is the loss of a model that predicts zero noise, i.e. one that has
lost everything it knew about the forget data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from unlearnctl.errors import require
from unlearnctl.methods import register_method
from unlearnctl.methods.base import Method, MethodConfig, StepOutput, param

if TYPE_CHECKING:
    import torch


@dataclass
class NegGradConfig(MethodConfig):
    alpha: float = param(0.0, "NegGrad's α, weight of the optional retain loss (0 = pure gradient ascent).",
                         flag="--neggrad-alpha")
    max_forget_loss: float = param(1.0, "divergence guard: stop when the moving average of the forget loss "
                                        "exceeds this (1.0 = the loss of predicting zero noise).")

    def __post_init__(self):
        require(self.alpha >= 0, f"α must be >= 0, got {self.alpha}")
        require(self.max_forget_loss > 0, f"max forget loss must be > 0, got {self.max_forget_loss}")


@register_method("neggrad")
class NegGrad(Method):
    """NegGrad: −L_f (+ α·L_r), with a divergence guard on L_f."""

    Config = NegGradConfig
    summary = "NegGrad: gradient ascent on the forget set (optional retain term), with a divergence guard"
    defaults = {"steps": 300, "lr": 2e-4, "batch_size": 64, "lr_schedule": "cosine", "ema_decay": 0.0}  # tuned on the small digits model (docs/methods.md)
    order = 60
    smoothing = 0.9  # moving average of L_f watched by the guard

    def prepare(self, progress=None) -> dict:
        self.L_f_average: float | None = None
        return {}

    def terms(self) -> dict[str, "torch.Tensor"]:
        terms = {"L_f": self.forget_loss()}
        if self.config.alpha > 0:
            terms["L_r"] = self.retain_loss()
        return terms

    def objective(self, terms: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        total = -terms["L_f"]
        return total + self.config.alpha * terms["L_r"] if "L_r" in terms else total

    def stop_reason(self, figures: StepOutput) -> str | None:
        L_f = figures.terms["L_f"]
        self.L_f_average = L_f if self.L_f_average is None else self.smoothing * self.L_f_average + (1 - self.smoothing) * L_f
        if self.L_f_average > self.config.max_forget_loss:
            return (f"divergence guard: forget loss (moving average) {self.L_f_average:.3g} exceeded "
                    f"{self.config.max_forget_loss:g}")
        return None

    def state_dict(self):
        return {"L_f_average": self.L_f_average}

    def load_state_dict(self, state) -> None:
        self.L_f_average = state["L_f_average"]
