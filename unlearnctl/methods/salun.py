"""SalUn — Saliency Unlearning (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation", ICLR 2024).

1. Weight saliency (paper Eq. 5): m_s = 1[ |∇θ L_f(θ)| ≥ γ ], with L_f the ordinary denoising loss on the
   forget set and γ chosen so that the top p% of weights (by gradient magnitude, over the whole model)
   are salient. Only salient weights change: θ = m_s ⊙ (Δθ + θ₀) + (1 − m_s) ⊙ θ₀.
2. Random labelling (paper Eq. 7) plus the retain loss:

       L = E_{(a, c_f) ~ D_f, c' ≠ c_f} ||ε_θ(m_t, t, c_f) − sg(ε_θ(m_t, t, c'))||²  +  α · L_r,

   m_t = γ_t a + σ_t ε: the forget condition is taught to predict what a random other class predicts.
   ``relabel`` chooses how c' is drawn: ``class`` (default) once per forgotten class, shared by all its
   images — SalUn's class-wise code relabels the forgotten class as one other class; ``image`` once per
   forget image; ``resample`` afresh at every step. The last two teach c_f, at high noise where the
   inputs are indistinguishable, the *average* of several classes' predictions, whose samples on digits
   are blurred superpositions the classifier still often calls an 8 (measured in docs/methods.md).

Unconditional models have no label to randomise; there the forget sample is "relabelled" as a random
retain image x_r: target (m_t − γ_t x_r)/σ_t (our adaptation, documented in docs/methods.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unlearnctl.errors import require
from unlearnctl.methods import register_method
from unlearnctl.methods.base import Method, MethodConfig, Update, norm, param

if TYPE_CHECKING:
    import torch

    from unlearnctl.progress import ProgressFn


@dataclass
class SalUnConfig(MethodConfig):
    saliency_percent: float = param(50.0, "p, the percentage of weights (largest |∇θ forget loss|) allowed to change.")
    alpha: float = param(0.5, "SalUn's α, weight of the retain loss next to the random-label loss.", flag="--salun-alpha")
    saliency_batches: int = param(8, "forget batches averaged for the saliency gradient.")
    relabel: str = param("class", "random labels: class (one random other class per forgotten class, as SalUn's "
                                  "class-wise code does), image (one per forget image) or resample (afresh every step).")

    def __post_init__(self):
        require(0 < self.saliency_percent <= 100, f"saliency percentage must be in (0, 100], got {self.saliency_percent}")
        require(self.alpha >= 0, f"α must be >= 0, got {self.alpha}")
        require(self.saliency_batches >= 1, f"saliency batches must be at least 1, got {self.saliency_batches}")
        require(self.relabel in RELABEL, f"relabel must be one of {', '.join(RELABEL)}, got {self.relabel!r}")


RELABEL = ("class", "image", "resample")


def saliency_mask(grads: list["torch.Tensor"], percent: float) -> list["torch.Tensor"]:
    """Boolean masks selecting the top ``percent``% entries of |g| over all tensors (global threshold γ)."""
    import torch

    magnitudes = torch.cat([g.abs().flatten() for g in grads])  # [P]
    keep = max(1, math.ceil(percent / 100 * magnitudes.numel()))
    gamma = torch.topk(magnitudes, keep, sorted=False).values.min()  # the k-th largest |g|
    return [g.abs() >= gamma for g in grads]


@register_method("salun")
class SalUn(Method):
    """SalUn: saliency mask from the forget-loss gradient, random-label loss + α · retain loss on salient weights."""

    Config = SalUnConfig
    order = 50
    summary = "SalUn: saliency mask (top-p% of |∇ forget loss|), random-label + α · retain loss, masked weights only"
    defaults = {"steps": 300, "lr": 5e-4, "batch_size": 64, "lr_schedule": "cosine", "ema_decay": 0.0}  # tuned on the small digits model (docs/methods.md)

    def check(self) -> None:
        require(not self.ctx.conditional or self.ctx.num_classes >= 2, "SalUn's random labels need at least two classes")

    def prepare(self, progress: "ProgressFn" = None) -> dict[str, Any]:
        import torch

        from unlearnctl.progress import report

        total = None
        for i in range(self.config.saliency_batches):
            grads = self.gradient(self.forget_loss())
            total = grads if total is None else [s + g for s, g in zip(total, grads)]
            report(progress, "saliency", i + 1, self.config.saliency_batches)
        self.masks = saliency_mask(total, self.config.saliency_percent)
        ctx = self.ctx
        if ctx.conditional:  # c' for every forget image (relabel = class or image)
            labels = ctx.forget.labels  # [k]
            if self.config.relabel == "class":  # one draw per distinct class, shared by its images
                classes = torch.unique(labels)  # [K_f]
                drawn = ctx.other_labels(classes)  # [K_f]
                self.pseudo = drawn[torch.searchsorted(classes, labels)]  # [k]
            else:
                self.pseudo = ctx.other_labels(labels)  # [k]
        else:  # the retain image each forget image is relabelled as
            self.pseudo = ctx.randint(len(ctx.retain), len(ctx.forget))  # [k] indices into D_r
        salient = sum(int(m.sum()) for m in self.masks)
        size = sum(m.numel() for m in self.masks)
        prepared = {"salient_weights": salient, "salient_share": salient / size}
        if ctx.conditional and self.config.relabel == "class":
            name = (lambda i: ctx.prompts[i]) if ctx.prompts is not None else str  # prompts, or class ids
            prepared["relabelled_as"] = {name(int(c)): (ctx.prompts[int(d)] if ctx.prompts is not None else int(d))
                                         for c, d in zip(classes, drawn)}
        return prepared

    def random_label_loss(self) -> "torch.Tensor":
        import torch

        from unlearnctl.diffusion import per_sample_mse

        ctx = self.ctx
        a, c_a, index = ctx.forget_batch()  # [B, C, H, W], [B] or None, [B]
        fixed = self.config.relabel != "resample"
        t = ctx.timesteps(a.shape[0])  # [B]
        eps = ctx.noise(a.shape)  # [B, C, H, W]
        m_t = ctx.schedule.add_noise(a, eps, t)  # [B, C, H, W]
        if ctx.conditional:
            with torch.no_grad():
                c_other = self.pseudo[index] if fixed else ctx.other_labels(c_a)  # [B], c' ≠ c_a
                target = self.predict(m_t, t, c_other)  # sg(ε_θ(m_t, t, c'))
        else:
            if fixed:
                x_r = ctx.encode(ctx.retain.images[self.pseudo[index]])  # each forget image's own retain image
            else:
                x_r, _ = ctx.retain_batch(a.shape[0], drop_labels=False)  # a random retain image per sample
            target = self.target(t, m_t=m_t, x0=x_r)  # ε = (m_t − γ_t x_r)/σ_t
        return per_sample_mse(self.predict(m_t, t, c_a), target).mean()

    def terms(self) -> dict[str, "torch.Tensor"]:
        return {"L_rl": self.random_label_loss(), "L_r": self.retain_loss()}

    def objective(self, terms: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        return terms["L_rl"] + self.config.alpha * terms["L_r"]

    def combine(self, terms: dict[str, "torch.Tensor"]) -> Update:
        update = super().combine(terms)
        # only salient weights receive a gradient (Adam then never moves the others)
        update.grads = [g * mask for g, mask in zip(update.grads, self.masks)]
        update.grad_norms["g_masked"] = float(norm(update.grads))
        return update

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks, "pseudo": self.pseudo}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = list(state["masks"])
        self.pseudo = state["pseudo"]
