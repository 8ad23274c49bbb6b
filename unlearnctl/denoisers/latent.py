"""Latent text-to-image models: a diffusers ``UNet2DConditionModel`` on VAE latents, conditioned on CLIP text.

The Stable Diffusion layout. Images are encoded to ``z = E(x) × scaling_factor`` (the mean of the VAE's
posterior, so a batch encodes the same way every time) and decoded by ``D(z / scaling_factor)``. A condition is
a batch of prompt embeddings ``[B, L, D]`` (the text encoder's last hidden state, as
``StableDiffusionPipeline.encode_prompt`` computes it): a tensor that methods index, concatenate and move like
class labels. The guidance (unconditional) condition is the empty prompt's embedding. The VAE, the text
encoder and the tokenizer are frozen; only the UNet is trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from unlearnctl.denoisers.base import Denoiser

if TYPE_CHECKING:
    from unlearnctl.diffusion import NoiseSchedule
    from unlearnctl.runtime import Runtime


class LatentTextDenoiser(Denoiser):
    """A ``UNet2DConditionModel`` on the latents of ``vae``, conditioned on ``text_encoder``'s prompt embeddings.

    A condition is either prompt embeddings ``[B, L, D]`` or, after :meth:`use_prompts`, prompt ids ``[B]``
    (integers) into that table of prompts: unlearning runs draw ids like class labels, and the table's last
    id is the empty prompt (the null condition of guidance), as a class-conditional model's null class is its last.
    """

    def __init__(self, network: torch.nn.Module, schedule: "NoiseSchedule | None", runtime: "Runtime | None" = None, *,
                 vae: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer: Any, scaling_factor: float):
        super().__init__(network, schedule, runtime)
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.scaling_factor = scaling_factor
        self._empty: torch.Tensor | None = None
        self.prompts: list[str] = []
        self.prompt_table: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    # ----- spaces

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist
        return posterior.mean.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((z / self.scaling_factor).to(self.vae.dtype)).sample.float()

    # ----- conditions

    @torch.no_grad()
    def embed(self, prompts: list[str], batch_size: int = 512) -> torch.Tensor:
        """Prompt embeddings ``[len(prompts), L, D]`` (float32, on the model's device), as
        ``StableDiffusionPipeline.encode_prompt`` computes them (:func:`unlearnctl.textenc.encode_prompts`),
        ``batch_size`` prompts per text-encoder call."""
        from unlearnctl.textenc import encode_prompts

        prompts = list(prompts)
        return torch.cat([encode_prompts(self.tokenizer, self.text_encoder, prompts[i:i + batch_size], self.device).float()
                          for i in range(0, len(prompts), batch_size)])

    def empty_embedding(self) -> torch.Tensor:
        """The empty prompt's embedding ``[1, L, D]`` (cached)."""
        if self._empty is None:
            self._empty = self.embed([""])
        return self._empty

    def use_prompts(self, prompts: list[str]) -> int:
        """Embed ``prompts`` once as the table prompt ids index (the empty prompt appended); returns its id."""
        self.prompts = [*prompts, ""]
        self.prompt_table = self.embed(self.prompts)
        return len(prompts)

    def embeddings(self, c: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``[B, L, D]`` of a condition: ids looked up in the prompt table, embeddings as given."""
        if c.is_floating_point():
            return c.to(self.device)
        if self.prompt_table is None:
            raise ValueError("prompt ids need a prompt table (use_prompts)")  # a programming error, not user input
        return self.prompt_table[c.to(self.prompt_table.device)].to(self.device)

    def condition(self, c: torch.Tensor | None) -> dict[str, Any]:
        return {"encoder_hidden_states": self.embeddings(c)}

    def null_condition(self, like: torch.Tensor | None) -> torch.Tensor:
        rows = 1 if like is None else like.shape[0]
        if like is not None and not like.is_floating_point():
            return torch.full_like(like, len(self.prompts) - 1)  # the table's empty prompt
        return self.empty_embedding().expand(rows, -1, -1)

    def predict(self, m_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``c = None`` is the empty prompt (the network always takes text)."""
        if c is None:
            c = self.null_condition(m_t)
        return super().predict(m_t, t, c)


# Which UNet parameters a run trains (the rest stay frozen). ESD-x trains the cross-attention layers (``attn2``:
# where the text enters), ESD-u everything else (Gandikota et al., 2023, §4).
TRAINABLE = {
    "all": lambda name: True,
    "cross-attention": lambda name: ".attn2." in name,
    "non-cross-attention": lambda name: ".attn2." not in name,
}


def select_trainable(unet: torch.nn.Module, choice: str = "all") -> int:
    """Let only the parameters of ``choice`` (:data:`TRAINABLE`) take gradients; returns how many values train."""
    from unlearnctl.errors import require

    require(choice in TRAINABLE, f"unknown trainable-parameter choice {choice!r}; choose {', '.join(TRAINABLE)}")
    chosen = 0
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_(TRAINABLE[choice](name))
        chosen += parameter.numel() if parameter.requires_grad else 0
    require(chosen > 0, f"the model has no {choice} parameters to train")
    return chosen
