"""Forget sets of text-to-image models: image–caption pairs, concepts by prompt, prompt ids.

A text-to-image model forgets what its forget specification names, with the captions it was trained on:

* ``--forget-class 8`` — the images of a class of captioned data and their captions (the concept "8");
* ``--forget-prompt TEXT`` — a concept by prompt: the training images captioned exactly ``TEXT`` and
  ``prompt_samples`` images the base model draws for it (SalUn's and EraseDiff's Stable Diffusion setting);
* ``--forget-index`` / ``--forget-images DIR`` with captions — memorised image–caption pairs (SISS's setting).

The captions are the data's own (``metadata.jsonl``, ``.txt`` files, ``.npz`` ``captions``) or, for labelled data
without captions (the embedded digits), the ones the model trained on:
:func:`~unlearnctl.text_to_image.captioned_split` regenerates them from the seed of its ``train`` entry. The methods then see every caption as a prompt id into one
table (:func:`with_prompt_ids`), drawn and relabelled like a class label (:class:`~unlearnctl.methods.base.MethodContext`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unlearnctl.data import ImageSet
from unlearnctl.errors import require
from unlearnctl.progress import ProgressFn

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import DataSplit, ForgetSet, ForgetSpec

UNCAPTIONED_FORGET_IMAGES = ("every forget image of a text-to-image model needs its caption: give --forget-images a folder "
                             "with metadata.jsonl (file_name, text) or a .txt beside each image, or an .npz with 'captions'")


def drawn_images(checkpoint: "Checkpoint", prompts: list[str], *, per_prompt: int, guidance: float, steps: int,
                 seed: int, device: str = "auto", progress: ProgressFn = None) -> ImageSet:
    """``per_prompt`` images the model draws for each prompt (DDIM), captioned with their prompt."""
    from unlearnctl.sampling import generate_from_prompts

    images = generate_from_prompts(checkpoint, prompts, per_prompt=per_prompt, steps=steps, sampler="ddim",
                                   guidance=guidance, seed=seed, device=device, progress=progress)
    return ImageSet(images.cpu(), None, list(checkpoint.data.get("class_names") or []),
                    [prompt for prompt in prompts for _ in range(per_prompt)])


def text_forget_set(checkpoint: "Checkpoint", spec: "ForgetSpec", split: "DataSplit", *, prompt_samples: int,
                    prompt_guidance: float, seed: int, device: str = "auto",
                    progress: ProgressFn = None) -> tuple["DataSplit", "ForgetSet"]:
    """The captioned split and the resolved forget set of a text-to-image model (the module doc says how)."""
    from unlearnctl.data import resolve_forget
    from unlearnctl.text_to_image import caption_seed, captioned_split, check_text_data

    check_text_data(split.description, checkpoint)
    split = captioned_split(split, caption_seed(checkpoint))
    drawn = None
    if spec.prompts:
        require(all(prompt.strip() for prompt in spec.prompts), "a forget prompt is empty; name the concept to forget")
        require(prompt_samples >= 1 or any(c in spec.prompts for c in split.train.captions),
                "no training image is captioned with the forget prompt, and --prompt-samples 0 draws none; "
                "draw images of the concept with --prompt-samples N")
        if prompt_samples:
            drawn = drawn_images(checkpoint, list(spec.prompts), per_prompt=prompt_samples, guidance=prompt_guidance,
                                 steps=50, seed=seed, device=device, progress=progress)
    forget_set = resolve_forget(spec, split, drawn)
    require(forget_set.forget.captions is not None, UNCAPTIONED_FORGET_IMAGES)
    return split, forget_set


def with_prompt_ids(forget_set: "ForgetSet") -> tuple[list[str], ImageSet, ImageSet]:
    """The run's prompt table (every caption of the retain and forget sets once, sorted) and both sets with
    their captions' ids as labels."""
    retain, forget = forget_set.retain, forget_set.forget
    prompts = sorted(set(retain.captions) | set(forget.captions))
    index = {prompt: i for i, prompt in enumerate(prompts)}

    def labelled(images: ImageSet) -> ImageSet:
        ids = torch.tensor([index[caption] for caption in images.captions], dtype=torch.long)
        return ImageSet(images.images, ids, images.class_names, images.captions)

    return prompts, labelled(retain), labelled(forget)
