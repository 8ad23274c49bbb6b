"""SISS (No IS) — the two-forward variant of SISS (Alberti et al., ICLR 2025; reference ``double_forward_with_neg_del``).

Instead of one sample from the defensive mixture, each pair (x, a) gets its own forward pass:

    L_x = n/(n−k) · mean ||ε_θ(γ_t x + σ_t ε, t, c_x) − ε||²,   L_a = k/(n−k) · mean ||ε_θ(γ_t a + σ_t ε, t, c_a) − ε||²,

with t and ε shared by x and a (as in the reference), and the same gradient-norm scaling as ``siss``:
g = g_x − (C/||g_a||)·g_a, then the loop's total-norm clip. Twice the compute of ``siss`` per sample, no
importance weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from unlearnctl.methods import register_method
from unlearnctl.methods.siss import GradientScaling, ScaledForgetTerm

if TYPE_CHECKING:
    import torch


@dataclass
class SISSNoISConfig(GradientScaling):
    """Only the gradient scaling (C, automatic by default)."""


@register_method("siss-no-is")
class SISSNoIS(ScaledForgetTerm):
    """SISS without importance sampling: separate forwards for the retain and forget batches."""

    Config = SISSNoISConfig
    order = 20
    summary = "SISS without importance sampling: two forwards (retain, forget), same gradient-norm scaling"
    defaults = {"steps": 400, "lr": 2e-4, "batch_size": 64, "lr_schedule": "constant", "ema_decay": 0.0}  # tuned on the small digits model (docs/methods.md)

    def terms(self) -> dict[str, "torch.Tensor"]:
        from unlearnctl.diffusion import per_sample_mse

        ctx, denoiser = self.ctx, self.ctx.denoiser
        x, c_x = ctx.retain_batch()  # [B, C, H, W], [B] or None
        a, c_a, _ = ctx.forget_batch(x.shape[0])  # [B, C, H, W], [B] or None
        t = ctx.timesteps(x.shape[0])  # [B], shared
        eps = ctx.noise(x.shape)  # [B, C, H, W], shared
        l_x = per_sample_mse(self.predict(denoiser.add_noise(x, eps, t), t, c_x), self.target(t, x0=x, eps=eps))  # [B]
        l_a = per_sample_mse(self.predict(denoiser.add_noise(a, eps, t), t, c_a), self.target(t, x0=a, eps=eps))  # [B]
        n, k = ctx.n, ctx.k
        return {"L_x": n / (n - k) * l_x.mean(), "L_a": k / (n - k) * l_a.mean()}
