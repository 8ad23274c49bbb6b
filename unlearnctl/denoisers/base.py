"""The denoiser interface: the model as methods, the attack and training see it.

A :class:`Denoiser` hides what kind of model a checkpoint holds (a pixel-space ``UNet2DModel`` today, a latent
text-to-image UNet with its VAE and text encoder next) behind five operations:

* :meth:`encode` — images (``[B, C, H, W]`` in [-1, 1]) into the space the diffusion runs in (identity for
  pixel models; VAE latents for latent ones), and :meth:`decode` back;
* :meth:`condition` — a batch of conditions (class labels, prompts, or ``None``) into what the network takes;
* :meth:`null_condition` — the condition of the unconditional branch used by classifier-free guidance
  (``None`` when the model has none: guidance is then unavailable);
* :meth:`predict` — the network's output at ``(m_t, t, c)`` in its own parameterisation;
* :meth:`target` — the loss target of that parameterisation (``epsilon``, ``v_prediction``, ``sample``) for
  ``m_t = γ_t x₀ + σ_t ε`` given any two of ``m_t``, ``x₀``, ``ε``.

Methods keep their paper symbols: a loss written as ``‖ε_θ(m_t, t, c) − ε‖²`` is computed as
``mse(denoiser.predict(m_t, t, c), denoiser.target(t, x0=x, eps=ε))``, which *is* that loss for an
ε-prediction model and the corresponding v- or x₀-loss for the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unlearnctl.runtime import Runtime

if TYPE_CHECKING:
    import torch

    from unlearnctl.diffusion import NoiseSchedule


class Denoiser:
    """Base of the model families. Subclasses implement :meth:`condition`, :meth:`null_condition` and
    :meth:`predict`; pixel models inherit the identity :meth:`encode`/:meth:`decode`.

    Attributes:
        network: the trainable module (its parameters are what methods change).
        schedule: the training noise schedule (γ_t, σ_t, ``prediction_type``).
        runtime: device, precision and this process's share of every batch (:mod:`unlearnctl.runtime`).
    """

    def __init__(self, network: "torch.nn.Module", schedule: "NoiseSchedule", runtime: Runtime | None = None):
        self.network, self.schedule = network, schedule
        self.runtime = runtime or Runtime()

    @property
    def prediction_type(self) -> str:
        return self.schedule.prediction_type

    # ----- spaces

    def encode(self, images: "torch.Tensor") -> "torch.Tensor":
        """Images into the diffusion's space (identity here)."""
        return images

    def decode(self, z: "torch.Tensor") -> "torch.Tensor":
        """The diffusion's space back into images (identity here)."""
        return z

    # ----- conditions

    def condition(self, c: Any) -> dict[str, Any]:
        """The network's keyword arguments for a batch of conditions ``c`` (``None``: unconditional)."""
        raise NotImplementedError

    def null_condition(self, like: Any) -> Any:
        """The guidance (unconditional) condition for a batch shaped like ``like``; ``None`` if the model has none."""
        raise NotImplementedError

    # ----- prediction and loss

    def predict(self, m_t: "torch.Tensor", t: "torch.Tensor", c: Any = None) -> "torch.Tensor":
        """The network's output at ``(m_t, t, c)``, float32, forward at the runtime's precision."""
        with self.runtime.autocast(m_t.device):
            out = self.network(m_t, t.to(m_t.device), **self.condition(c)).sample
        return out.float()

    def target(self, t: "torch.Tensor", *, m_t: "torch.Tensor | None" = None, x0: "torch.Tensor | None" = None,
               eps: "torch.Tensor | None" = None) -> "torch.Tensor":
        """The loss target of the model's ``prediction_type`` (:meth:`NoiseSchedule.target`)."""
        return self.schedule.target(t, m_t=m_t, x0=x0, eps=eps)

    def add_noise(self, x0: "torch.Tensor", eps: "torch.Tensor", t: "torch.Tensor") -> "torch.Tensor":
        """``m_t = γ_t x₀ + σ_t ε``."""
        return self.schedule.add_noise(x0, eps, t)

    def coefficients(self, t: "torch.Tensor", device: "torch.device | None" = None) -> tuple["torch.Tensor", "torch.Tensor"]:
        """γ_t, σ_t shaped ``[B, 1, 1, 1]`` (on ``device`` when given)."""
        gamma, sigma = self.schedule.coefficients(t)
        return (gamma, sigma) if device is None else (gamma.to(device), sigma.to(device))

    def parameters(self) -> list["torch.Tensor"]:
        """The trainable parameters (``requires_grad``)."""
        return [p for p in self.network.parameters() if p.requires_grad]
