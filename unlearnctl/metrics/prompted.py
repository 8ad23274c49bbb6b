"""Does a text-to-image model draw what it is asked for? The share of its samples for each class's prompt that
the domain classifier assigns to that class (the text-to-image counterpart of retain accuracy)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from unlearnctl.metrics.intervals import rate_fields
from unlearnctl.progress import ProgressFn

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.metrics.classifier import DomainClassifier


def prompted_class_accuracy(
    checkpoint: "Checkpoint",
    classifier: "DomainClassifier",
    *,
    per_class: int = 50,
    steps: int = 50,
    sampler: str = "pipeline",
    guidance: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressFn = None,
) -> dict[str, Any]:
    """Sample ``per_class`` images for each class's prompt (:func:`unlearnctl.captions.class_prompt`) and score
    them with ``classifier``: ``prompt_accuracy`` (count, n and Wilson 95% interval), the same per class, and
    the prompts and sampler used."""
    from unlearnctl.captions import class_prompt
    from unlearnctl.sampling import generate_from_prompts

    names = checkpoint.data["class_names"]
    prompts = [class_prompt(name) for name in names]
    images = generate_from_prompts(checkpoint, prompts, per_prompt=per_class, steps=steps, sampler=sampler,
                                   guidance=guidance, seed=seed, device=device, progress=progress)
    asked = torch.arange(len(names)).repeat_interleave(per_class)
    hits = classifier.predict(images).cpu() == asked
    per = {name: rate_fields("accuracy", int(hits[asked == i].sum()), per_class) for i, name in enumerate(names)}
    return {**rate_fields("prompt_accuracy", int(hits.sum()), len(hits)), "per_class": per, "prompts": prompts,
            "sampler": sampler, "steps": steps, "guidance": guidance, "seed": seed}
