"""CLIP score of text-to-image samples against their prompts, from local CLIP weights (nothing is downloaded).

``CLIP score(x, p) = 100 · max(cos(E_I(x), E_T(p)), 0)`` with ``E_I``/``E_T`` the CLIP image and text
projections (Hessel et al. 2021, "CLIPScore"; the ×100 scaling and clipping at 0 of torchmetrics'
``CLIPScore``, the figure Stable Diffusion papers report). The evaluation reports the mean over samples with a
percentile bootstrap interval of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearnctl.errors import BadInputError, require


@dataclass
class Clip:
    """A loaded CLIP model and its processor (tokenizer + image preprocessing), with where it came from."""

    model: Any  # transformers.CLIPModel
    processor: Any  # transformers.CLIPProcessor
    path: str
    weights_sha256: str


def check_clip_folder(folder: str | Path) -> Path:
    """Refuse (exit 2) a ``--clip-model`` that is not a folder of ``save_pretrained`` CLIP safetensors weights."""
    path = Path(folder)
    require(path.is_dir(), f"--clip-model {folder} is not a folder; give a CLIP model saved with save_pretrained "
            "(config.json, model.safetensors, tokenizer and preprocessor files)")
    require((path / "config.json").is_file(), f"--clip-model {folder} has no config.json")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        only = f" (only {', '.join(pickles)})" if pickles else ""
        raise BadInputError(f"--clip-model {folder} has no .safetensors weights{only}; pickle weights are refused")
    return path


def load_clip(folder: str | Path, device: torch.device | str = "cpu") -> Clip:
    """``CLIPModel`` and ``CLIPProcessor`` from ``folder`` (offline, safetensors only)."""
    import hashlib

    from transformers import CLIPModel, CLIPProcessor

    path = check_clip_folder(folder)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # progress is the CLI's (stderr stays one line per event)
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        from unlearnctl.errors import cause_of

        raise BadInputError(f"transformers could not read the CLIP model in {folder}: {cause_of(exc)}") from None
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return Clip(model.eval().to(device), processor, str(path), digest.hexdigest())


@torch.no_grad()
def clip_scores(clip: Clip, images: torch.Tensor, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Per-sample CLIP score ``[N]`` of ``images`` (``N×C×H×W`` in [-1, 1]; grey is repeated to RGB) against
    ``prompts`` (one each)."""
    from unlearnctl.data import to_uint8

    require(len(images) == len(prompts), f"{len(images)} images for {len(prompts)} prompts")
    model, device = clip.model, next(clip.model.parameters()).device
    pixels = to_uint8(images)  # N×C×H×W uint8
    if pixels.shape[1] == 1:
        pixels = pixels.repeat(3, axis=1)
    scores = []
    for start in range(0, len(images), batch_size):
        inputs = clip.processor(text=prompts[start:start + batch_size], images=list(pixels[start:start + batch_size]),
                                return_tensors="pt", padding=True, truncation=True)
        out = model(**{key: value.to(device) for key, value in inputs.items()})
        image, text = out.image_embeds.float(), out.text_embeds.float()  # B×P each: the projections E_I, E_T
        cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)  # pair i: image i with prompt i
        scores.append(100 * cosine.clamp(min=0).cpu())
    return torch.cat(scores)
