"""ESD — Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023, eq. 3), text-to-image models only.

The model is fine-tuned so that, conditioned on the concept's prompt c, it predicts what the frozen base θ*
predicts with *negative* guidance away from c:

    L_ESD = E ||ε_θ(x_t, t, c) − [ε_θ*(x_t, t, ∅) − η (ε_θ*(x_t, t, c) − ε_θ*(x_t, t, ∅))]||².

x_t is drawn as in the paper: the model being trained samples the concept (DDIM, ``--esd-sample-steps`` steps,
guidance ``--esd-start-guidance`` on c) from noise for a uniformly random number k of steps, and t is the
timestep that sample has reached. (The reference code pairs that sample with a DDPM timestep drawn near
k·T/S instead of its own; the noise level of x_t and t agree here.) ``--esd-source data`` noises the forget
set's images instead (cheaper; not the paper's). One random k per step serves the whole batch.

``esd-x`` trains the cross-attention layers only (the paper's choice for artists' styles, which stay tied to the
prompt), ``esd-u`` everything else (its choice for nudity and objects, erased even without their prompt);
``--trainable`` overrides either. The target is an affine combination of the base's outputs (weights 1 + η
and −η), so it is the same target in ε, v or x₀ parameterisation: it is formed on the network's raw outputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unlearnctl.errors import require
from unlearnctl.methods import register_method
from unlearnctl.methods.base import Method, MethodConfig, param

if TYPE_CHECKING:
    import torch

    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.progress import ProgressFn

SOURCES = ("sampled", "data")


@dataclass
class ESDConfig(MethodConfig):
    negative_guidance: float = param(1.0, "ESD's η: how far the target steers away from the concept.", flag="--esd-eta")
    start_guidance: float = param(3.0, "guidance scale of the samples x_t is drawn from (the reference's start_guidance).",
                                  flag="--esd-start-guidance")
    sample_steps: int = param(50, "DDIM steps of the sampler x_t is drawn from (the reference's ddim_steps).",
                              flag="--esd-sample-steps")
    source: str = param("sampled", "where x_t comes from: sampled (the model draws the concept, as the paper) or "
                                   "data (the forget images noised).", flag="--esd-source")

    def __post_init__(self):
        require(self.negative_guidance >= 0, f"η must be >= 0, got {self.negative_guidance}")
        require(self.start_guidance >= 1, f"start guidance must be at least 1 (1 = none), got {self.start_guidance}")
        require(self.sample_steps >= 1, f"sample steps must be at least 1, got {self.sample_steps}")
        require(self.source in SOURCES, f"ESD source must be one of {', '.join(SOURCES)}, got {self.source!r}")


class ESD(Method):
    """ESD: match the frozen base's negatively guided prediction for the concept's prompts."""

    Config = ESDConfig
    order = 55
    scenarios = ("concept",)
    models = ("text-to-image",)
    defaults = {"steps": 200, "lr": 1e-4, "batch_size": 8, "lr_schedule": "constant", "ema_decay": 0.0}

    @classmethod
    def check_model(cls, checkpoint: "Checkpoint") -> None:
        require(checkpoint.text_conditional, f"{cls.name} erases a concept from a text-to-image model's prompts; this "
                "model is not text-conditional (use another --method)")

    def prepare(self, progress: "ProgressFn" = None) -> dict[str, Any]:
        ctx = self.ctx
        self.base = copy.copy(ctx.denoiser)  # the same prompt table and autoencoder ...
        self.base.network = copy.deepcopy(ctx.unet).requires_grad_(False).eval()  # ... on the frozen base θ*
        return {"trainable_values": sum(p.numel() for p in ctx.parameters())}

    def concept_batch(self) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """x_t, t and the concept's prompt ids c (``[B, C, h, w]``, ``[B]``, ``[B]``)."""
        ctx = self.ctx
        if self.config.source == "data":
            a, c, _ = ctx.forget_batch()
            t = ctx.timesteps(a.shape[0])
            return ctx.denoiser.add_noise(a, ctx.noise(a.shape), t), t, c
        c = ctx.forget_conditions()
        return (*self.sample_until(c), c)

    def sample_until(self, c: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """The model's own DDIM sample for c, stopped after a random number k of its ``sample_steps`` steps."""
        import torch

        from unlearnctl.diffusion import text_sampler

        ctx = self.ctx
        scheduler = text_sampler(ctx.checkpoint.components, "ddim", self.config.sample_steps)
        k = int(torch.randint(0, self.config.sample_steps, (1,), generator=ctx.generator))  # the same k in every process
        shape = (c.shape[0], ctx.unet.config.in_channels, ctx.unet.config.sample_size, ctx.unet.config.sample_size)
        z = ctx.noise(torch.Size(shape)) * scheduler.init_noise_sigma
        with torch.no_grad():
            for tau in scheduler.timesteps[:k]:
                t = tau.repeat(c.shape[0])
                out = guided(ctx.denoiser, z, t, c, self.config.start_guidance)
                z = scheduler.step(out, tau, z).prev_sample
        return z, scheduler.timesteps[k].repeat(c.shape[0])

    def target_of(self, x_t: "torch.Tensor", t: "torch.Tensor", c: "torch.Tensor") -> "torch.Tensor":
        """ε_θ*(x_t, t, ∅) − η (ε_θ*(x_t, t, c) − ε_θ*(x_t, t, ∅)), from the frozen base."""
        import torch

        with torch.no_grad():
            e_0 = self.base.predict(x_t, t, self.base.null_condition(c))
            e_c = self.base.predict(x_t, t, c)
        return e_0 - self.config.negative_guidance * (e_c - e_0)

    def terms(self) -> dict[str, "torch.Tensor"]:
        from unlearnctl.diffusion import per_sample_mse

        x_t, t, c = self.concept_batch()
        return {"L_esd": per_sample_mse(self.predict(x_t, t, c), self.target_of(x_t, t, c)).mean()}

    def objective(self, terms: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        return terms["L_esd"]


def guided(denoiser: Any, z: "torch.Tensor", t: "torch.Tensor", c: "torch.Tensor", scale: float) -> "torch.Tensor":
    """Classifier-free guided output: out(∅) + scale · (out(c) − out(∅)) (just out(c) at scale 1)."""
    out = denoiser.predict(z, t, c)
    if scale == 1:
        return out
    null = denoiser.predict(z, t, denoiser.null_condition(c))
    return null + scale * (out - null)


@register_method("esd-x")
class ESDx(ESD):
    """ESD-x: the cross-attention layers (``attn2``) train; the rest of the UNet stays the base's."""

    summary = "ESD-x (text-to-image): steer the concept's prompts to the base's negatively guided prediction; cross-attention trains"
    defaults = {**ESD.defaults, "trainable": "cross-attention"}


@register_method("esd-u")
class ESDu(ESD):
    """ESD-u: every UNet layer but the cross-attention trains (the concept is erased without its prompt too)."""

    summary = "ESD-u (text-to-image): as esd-x, training every layer but cross-attention"
    order = 56
    defaults = {**ESD.defaults, "trainable": "non-cross-attention"}
