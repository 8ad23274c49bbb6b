"""EraseDiff (Wu et al., "EraseDiff: Erasing Data Influence in Diffusion Models", arXiv 2401.05779).

A constrained problem: keep the denoising loss F on retain data low while the forget loss q drives the
model's prediction on noisy forget data towards a target that is *not* the true noise,

    F(θ) = E_{x, c_x ~ D_r} ||ε_θ(m_t, t, c_x) − ε||²,      q(θ) = E_{a, c_a ~ D_f} ||ε_θ(m_t(a), t, c_a) − ε_f||²,

solved with the first-order (BOME-style) update of the paper:

    ∇θ = ∇F + λ·∇q,   λ = max(η − ⟨∇F, ∇q⟩ / ||∇q||², 0),

which makes the update descend q by at least η·||∇q||² while following F. Two forget targets are
published; ``--forget-target`` picks one:

* ``uniform`` (default, the variant of the paper's main text and of the SISS reference code):
  ε_f ~ U[0, 1) drawn afresh for each sample;
* ``pseudo-label``: ε_f = sg(ε_θ(m_t(a), t, c')), the model's own prediction under a random other class c'
  (class-conditional models only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from unlearnctl.errors import require
from unlearnctl.methods import register_method
from unlearnctl.methods.base import Method, MethodConfig, Update, dot, norm, param

if TYPE_CHECKING:
    import torch

FORGET_TARGETS = ("uniform", "pseudo-label")


@dataclass
class EraseDiffConfig(MethodConfig):
    eta: float = param(0.1, "η, the minimum descent of the forget loss per step relative to ‖∇q‖² "
                            "(λ = max(η − ⟨∇F,∇q⟩/‖∇q‖², 0)).")
    forget_target: str = param("uniform", "target of the forget loss: uniform (noise U[0,1)) or "
                                          "pseudo-label (prediction under a random other class; conditional models).")

    def __post_init__(self):
        require(self.eta >= 0, f"η must be >= 0, got {self.eta}")
        require(self.forget_target in FORGET_TARGETS,
                f"forget target must be one of {', '.join(FORGET_TARGETS)}, got {self.forget_target!r}")


def erasediff_lambda(grad_F: list["torch.Tensor"], grad_q: list["torch.Tensor"], eta: float) -> float:
    """λ = max(η − ⟨∇F, ∇q⟩ / ||∇q||², 0) (0 when ∇q vanishes)."""
    q_sq = float(norm(grad_q)) ** 2
    if q_sq == 0.0:
        return 0.0
    return max(eta - float(dot(grad_F, grad_q)) / q_sq, 0.0)


@register_method("erasediff")
class EraseDiff(Method):
    """EraseDiff's first-order constrained update (paper Alg. 1), forget target ``uniform`` or ``pseudo-label``."""

    Config = EraseDiffConfig
    order = 30
    summary = "EraseDiff: first-order constrained update ∇F + λ∇q, forget target uniform noise or pseudo-label"
    defaults = {"steps": 900, "lr": 2e-4, "batch_size": 32, "lr_schedule": "cosine", "ema_decay": 0.0}  # tuned on the small digits model (docs/methods.md)

    def check(self) -> None:
        require(self.config.forget_target != "pseudo-label" or self.ctx.conditional,
                "EraseDiff's pseudo-label target needs a class-conditional model; use --forget-target uniform")

    def forget_objective(self) -> "torch.Tensor":
        """q: mean ||ε_θ(m_t(a), t, c_a) − ε_f||² on a forget batch."""
        import torch

        from unlearnctl.diffusion import per_sample_mse

        ctx = self.ctx
        a, c_a, _ = ctx.forget_batch()  # [B, C, H, W], [B] or None
        t = ctx.timesteps(a.shape[0])  # [B]
        m_t = ctx.denoiser.add_noise(a, ctx.noise(a.shape), t)  # [B, C, H, W]
        eps_pred = self.predict(m_t, t, c_a)  # [B, C, H, W]
        if self.config.forget_target == "uniform":
            eps_f = self.target(t, m_t=m_t, eps=ctx.uniform(a.shape))  # ε_f ~ U[0, 1), as the model's target
        else:
            with torch.no_grad():
                eps_f = self.predict(m_t, t, ctx.other_labels(c_a))  # sg(ε_θ(m_t, t, c'))
        return per_sample_mse(eps_pred, eps_f).mean()

    def terms(self) -> dict[str, "torch.Tensor"]:
        return {"F": self.retain_loss(), "q": self.forget_objective()}

    def combine(self, terms: dict[str, "torch.Tensor"]) -> Update:
        """∇θ = ∇F + λ·∇q with λ = max(η − ⟨∇F, ∇q⟩/‖∇q‖², 0)."""
        grad_F = self.gradient(terms["F"])
        grad_q = self.gradient(terms["q"])
        lam = erasediff_lambda(grad_F, grad_q, self.config.eta)
        grads = [gf + lam * gq for gf, gq in zip(grad_F, grad_q)]
        return Update(grads, float(terms["F"].detach()) + lam * float(terms["q"].detach()),
                      {"grad_F": float(norm(grad_F)), "grad_q": float(norm(grad_q)), "g": float(norm(grads))},
                      figures={"lambda": lam})
