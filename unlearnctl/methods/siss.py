"""SISS — Subtracted Importance-Sampled Scores (Alberti et al., "Data Unlearning in Diffusion Models", ICLR 2025).

The retain-set loss is written as the full-data loss minus the forget-set loss,

    L_{X\\A}(θ) = n/(n−k) · E_x E_{m_t~q(m_t|x)} ||ε_θ(m_t, t) − (m_t − γ_t x)/σ_t||²
                − k/(n−k) · E_a E_{m_t~q(m_t|a)} ||ε_θ(m_t, t) − (m_t − γ_t a)/σ_t||²,

and both expectations are estimated from *one* noisy sample per pair (x, a), drawn from the defensive
mixture q_λ(m_t | x, a) = (1−λ) q(m_t|x) + λ q(m_t|a), with importance weights (paper Eq. 7)

    w_x = q(m_t|x) / q_λ = 1 / ((1−λ) + λ·exp(d_x − d_a)),   w_a = q(m_t|a) / q_λ = 1 / ((1−λ)·exp(d_a − d_x) + λ),
    d_x = ||m_t − γ_t x||² / (2σ_t²),   d_a = ||m_t − γ_t a||² / (2σ_t²).

The weights are computed in log space (``logaddexp``): d_x − d_a reaches 10⁴ at small σ_t, where the
direct ``exp`` overflows. As in the reference implementation, x is drawn from the retain set, x and a share
t and ε, and the scalar in front of the negative term is replaced by gradient-norm scaling:

    g = g_x − (C / ||g_a||) · g_a,   g_x = ∇ n/(n−k)·mean(w_x ℓ_x),   g_a = ∇ k/(n−k)·mean(w_a ℓ_a),

after which the shared loop clips the total norm (1.0). The negative term therefore has norm exactly C;
the reference recommends C ≈ 10% of the naive-deletion gradient norm ||g_x||, which is the automatic
choice here (measured on a few batches before the first step).

Class-conditional models: the mixture also draws the condition. A sample noised from x carries x's label
c_x, one noised from a carries c_a, and q(m_t, c | x, c_x) = N(m_t; γ_t x, σ_t² I)·1[c = c_x]. When
c_x ≠ c_a the weights reduce to 1[c = c_x]/(1−λ) and 1[c = c_a]/λ; when equal (unconditional models,
data forgetting within one class, both labels dropped to the null class) they are the weights above.

Fast mode (opt-in, ``--refresh-every K``, K > 1): the exact step needs two backward passes (g_x and g_a
separately, to know ||g_a||). With K > 1, ||g_a|| is measured exactly on every K-th step only. In between
it is *estimated* from the gradient of L_a with respect to the output head alone (``conv_norm_out``,
``conv_out``: a backward through two layers), times the ratio ||g_a|| / ||g_a(head)|| of the last exact
step — ||g_a|| jumps by 2× from one batch to the next, the ratio stays within ~15% — and the step takes *one*
backward pass of L_x − (C/||g_a||_est)·L_a. Its effect on forget rate and quality is measured in
docs/performance.md; K = 1 (default) is the exact reference step.
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
class GradientScaling(MethodConfig):
    """The negative-term scaling shared by ``siss`` and ``siss-no-is``."""

    scaling_norm: float | None = param(
        None, "C, the norm the forget (negative) gradient term is scaled to: g = g_x − (C/‖g_a‖)·g_a, in this "
        "tool's loss units (means over pixels; the reference sums over pixels, so its values 5, 500, 750 do not "
        "carry over); automatic = --scaling-share × the naive-deletion gradient norm.")
    scaling_share: float = param(0.1, "automatic C = this share of the naive-deletion gradient norm ‖g_x‖ "
                                      "measured before the first step (reference: ≈10%).")
    calibration_batches: int = param(4, "batches averaged to measure ‖g_x‖ for the automatic C.")

    def __post_init__(self):
        require(self.scaling_norm is None or self.scaling_norm > 0, f"scaling norm C must be > 0, got {self.scaling_norm}")
        require(0 < self.scaling_share <= 10, f"scaling share must be in (0, 10], got {self.scaling_share}")
        require(self.calibration_batches >= 1, f"calibration batches must be at least 1, got {self.calibration_batches}")


@dataclass
class SISSConfig(GradientScaling):
    lambda_: float = param(0.5, "defensive-mixture weight λ ∈ (0, 1), the share of noisy samples drawn from "
                                "forget images.", flag="--lambda")
    refresh_every: int = param(1, "fast mode: measure ‖g_a‖ exactly every K steps only and estimate it in between "
                                  "from the output head's gradient (one full backward pass instead of two on those "
                                  "steps); 1 = exact.")

    def __post_init__(self):
        super().__post_init__()
        require(0 < self.lambda_ < 1, f"λ must be strictly between 0 and 1, got {self.lambda_}")
        require(self.refresh_every >= 1, f"refresh interval must be at least 1 step, got {self.refresh_every}")


# --------------------------------------------------------------------------------------------- the formulas


def mixture_distances(m_t: "torch.Tensor", x: "torch.Tensor", a: "torch.Tensor", gamma: "torch.Tensor",
                      sigma: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """d_x = ||m_t − γ_t x||²/(2σ_t²) and d_a likewise, summed over pixels: shapes ``[B]``."""
    d_x = (m_t - gamma * x).pow(2).flatten(1).sum(1) / (2 * sigma.flatten().pow(2))
    d_a = (m_t - gamma * a).pow(2).flatten(1).sum(1) / (2 * sigma.flatten().pow(2))
    return d_x, d_a


def siss_weights(d_x: "torch.Tensor", d_a: "torch.Tensor", lam: float, match_x: "torch.Tensor | None" = None,
                 match_a: "torch.Tensor | None" = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Importance weights (w_x, w_a), shapes ``[B]``, computed without overflow.

    ``match_x[i]`` says whether sample i's condition equals c_x (``None``: always, the unconditional case),
    likewise ``match_a``. log w_x = −log((1−λ) + λ·1[c=c_a]·exp(d_x − d_a)) via ``logaddexp``.
    """
    import torch

    zero = torch.zeros_like(d_x)
    log_match_x = zero if match_x is None else torch.where(match_x, zero, torch.full_like(zero, -math.inf))
    log_match_a = zero if match_a is None else torch.where(match_a, zero, torch.full_like(zero, -math.inf))
    log_w_x = -torch.logaddexp(torch.full_like(zero, math.log(1 - lam)), math.log(lam) + (d_x - d_a) + log_match_a)
    log_w_a = -torch.logaddexp(math.log(1 - lam) + (d_a - d_x) + log_match_x, torch.full_like(zero, math.log(lam)))
    w_x = torch.exp(log_w_x) if match_x is None else torch.where(match_x, torch.exp(log_w_x), zero)
    w_a = torch.exp(log_w_a) if match_a is None else torch.where(match_a, torch.exp(log_w_a), zero)
    return w_x, w_a


def scale_negative(g_x: list["torch.Tensor"], g_a: list["torch.Tensor"], C: float) -> tuple[list["torch.Tensor"], float]:
    """g = g_x − (C/‖g_a‖)·g_a; returns g and the factor C/‖g_a‖ (0 when g_a vanishes)."""
    import torch

    g_a_norm = float(norm(g_a))
    factor = C / g_a_norm if g_a_norm > 0 else 0.0
    return list(torch._foreach_add(g_x, g_a, alpha=-factor)), factor  # g_x − factor·g_a, fused over all tensors


def calibrate_scaling_norm(method: Method, share: float, batches: int, progress: "ProgressFn" = None) -> float:
    """Automatic C: ``share`` × the mean norm of the naive-deletion gradient g_x over ``batches`` batches."""
    from unlearnctl.progress import report

    norms = []
    for i in range(batches):
        L_x = method.terms()["L_x"]  # the naive-deletion term of the method's own loss
        norms.append(float(norm(method.gradient(L_x))))
        report(progress, "calibrate C", i + 1, batches)
    return share * sum(norms) / len(norms)


class ScaledForgetTerm(Method):
    """Shared by ``siss`` and ``siss-no-is``: ``prepare`` fixes C (given, or measured by
    :func:`calibrate_scaling_norm`); ``combine`` forms g = g_x − (C/‖g_a‖)·g_a from the terms L_x and L_a."""

    C: float

    def prepare(self, progress: "ProgressFn" = None) -> dict[str, Any]:
        self.factor: float | None = None  # C/‖g_a‖ of the last step
        if self.config.scaling_norm is None:
            self.C = calibrate_scaling_norm(self, self.config.scaling_share, self.config.calibration_batches, progress)
        else:
            self.C = self.config.scaling_norm
        return {"scaling_norm": self.C, "scaling_norm_automatic": self.config.scaling_norm is None}

    def combine(self, terms: dict[str, "torch.Tensor"]) -> Update:
        return self.scaled_update(terms)[0]

    def scaled_update(self, terms: dict[str, "torch.Tensor"]) -> tuple[Update, list["torch.Tensor"]]:
        """The exact step g = g_x − (C/‖g_a‖)·g_a, and g_a."""
        L_x, L_a = terms["L_x"], terms["L_a"]
        g_x = self.gradient(L_x, retain_graph=True)  # L_x and L_a may share a forward pass
        g_a = self.gradient(L_a)
        g, self.factor = scale_negative(g_x, g_a, self.C)
        return Update(g, L_x - self.factor * L_a,  # the objective whose gradient is g (factor held constant)
                      {"g_x": float(norm(g_x)), "g_a": float(norm(g_a)), "g": float(norm(g))}), g_a

    def state_dict(self) -> dict[str, Any]:
        return {"scaling_norm": self.C, "factor": self.factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.C = float(state["scaling_norm"])
        self.factor = state.get("factor")


# --------------------------------------------------------------------------------------------- the method


@register_method("siss")
class SISS(ScaledForgetTerm):
    """SISS with importance sampling: one UNet forward per sample (paper Eq. 7, reference ``importance_sampling_with_mixture``).

    Parameters (:class:`SISSConfig`): λ (mixture weight), C (``scaling_norm``, automatic by default),
    ``scaling_share`` and ``calibration_batches`` (how the automatic C is measured).
    """

    Config = SISSConfig
    order = 10
    scenarios = ("class", "canary", "concept")
    summary = "SISS: importance-sampled defensive mixture, one forward per sample, gradient-norm-scaled forget term"
    defaults = {"steps": 400, "lr": 2e-4, "batch_size": 64, "lr_schedule": "constant", "ema_decay": 0.0}  # tuned on the small digits model (docs/methods.md)

    def prepare(self, progress: "ProgressFn" = None) -> dict[str, Any]:
        self.steps_taken = 0  # fast mode measures ‖g_a‖ exactly when a multiple of refresh_every
        self.head_ratio: float | None = None  # ‖g_a‖ / ‖g_a restricted to the output head‖ at the last exact step
        return super().prepare(progress)

    def terms(self) -> dict[str, "torch.Tensor"]:
        """L_x = n/(n−k)·mean(w_x ℓ_x) and L_a = k/(n−k)·mean(w_a ℓ_a) from one forward pass (and the mean weights)."""
        import torch

        from unlearnctl.diffusion import per_sample_mse

        ctx, lam = self.ctx, self.config.lambda_
        x, c_x = ctx.retain_batch()  # [B, C, H, W], [B] or None
        a, c_a, _ = ctx.forget_batch(x.shape[0])  # [B, C, H, W], [B] or None
        t = ctx.timesteps(x.shape[0])  # [B]; shared by x and a
        eps = ctx.noise(x.shape)  # [B, C, H, W]; shared by x and a
        gamma, sigma = ctx.coefficients(t)  # [B, 1, 1, 1]
        from_a = ctx.bernoulli(x.shape[0], lam)  # [B] bool: m_t drawn from q(·|a), else from q(·|x)
        source = torch.where(from_a.view(-1, 1, 1, 1), a, x)  # [B, C, H, W]
        m_t = gamma * source + sigma * eps  # [B, C, H, W], m_t ~ q_λ(m_t | x, a)

        match_x = match_a = c = None
        if c_x is not None:
            c = torch.where(from_a.cpu(), c_a.cpu(), c_x.cpu())  # [B]: the condition comes with the sample's source
            match_x, match_a = (c == c_x).to(ctx.device), (c == c_a).to(ctx.device)
        d_x, d_a = mixture_distances(m_t, x, a, gamma, sigma)  # [B], [B]
        w_x, w_a = siss_weights(d_x, d_a, lam, match_x, match_a)  # [B], [B]

        out = self.predict(m_t, t, c)  # [B, C, H, W]: the one forward pass
        l_x = per_sample_mse(out, self.target(t, m_t=m_t, x0=x))  # [B]; ε-models: (m_t − γ_t x)/σ_t
        l_a = per_sample_mse(out, self.target(t, m_t=m_t, x0=a))  # [B]; ε-models: (m_t − γ_t a)/σ_t
        n, k = ctx.n, ctx.k
        L_x = n / (n - k) * (w_x * l_x).mean()
        L_a = k / (n - k) * (w_a * l_a).mean()
        return {"L_x": L_x, "L_a": L_a, "w_x": w_x.mean(), "w_a": w_a.mean()}

    def combine(self, terms: dict[str, "torch.Tensor"]) -> Update:
        fast_mode = self.config.refresh_every > 1
        refresh = self.steps_taken % self.config.refresh_every == 0 or self.head_ratio is None
        self.steps_taken += 1
        if not fast_mode:
            return super().combine(terms)
        params = self.ctx.parameters()
        head = _output_head(self.ctx.unet, params)
        if not refresh:  # fast mode: ‖g_a‖ estimated from the output head, one full backward pass
            L_x, L_a = terms["L_x"], terms["L_a"]
            g_a_est = self.head_ratio * float(norm(self.gradient(L_a, retain_graph=True, params=[params[i] for i in head])))
            self.factor = self.C / g_a_est if g_a_est > 0 else 0.0
            g = self.gradient(L_x - self.factor * L_a)
            return Update(g, L_x - self.factor * L_a, {"g_a_est": g_a_est, "g": float(norm(g))})
        update, g_a = self.scaled_update(terms)  # the exact step, and the ratio the next steps scale the head's norm by
        head_norm = float(norm([g_a[i] for i in head]))
        self.head_ratio = update.grad_norms["g_a"] / head_norm if head_norm > 0 else None
        return update

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps_taken": self.steps_taken, "head_ratio": self.head_ratio}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.steps_taken = int(state.get("steps_taken", 0))
        self.head_ratio = state.get("head_ratio")


def _output_head(unet: "torch.nn.Module", params: list["torch.Tensor"]) -> list[int]:
    """Indices into ``params`` of the UNet's output head (``conv_norm_out``, ``conv_out``; for other
    models the last two parameter tensors): the cheap proxy of ‖g_a‖ in fast mode."""
    position = {id(p): i for i, p in enumerate(params)}
    head = [position[id(p)] for name, p in unet.named_parameters()
            if name.split(".")[0] in ("conv_norm_out", "conv_out") and id(p) in position]
    return head or list(range(max(0, len(params) - 2), len(params)))
