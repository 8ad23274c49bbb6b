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

Every forget set of a text-to-image model — unlearning's here, evaluation's and the relearning curve's
(:func:`unlearnctl.metrics.text.resolve_text_forget`) — is resolved in two shared steps: :func:`text_split` (the
data checked against the model and captioned) and :func:`resolve_captioned` (:func:`unlearnctl.data.resolve_forget`,
every forget image with its caption). Each use adds one step of its own on top: unlearning the images the model
draws for the forget prompts (:func:`prompt_images`); evaluation the class of a concept
(:func:`unlearnctl.metrics.text.concept_prompts`), which it scores.
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

def drawn_images(checkpoint: "Checkpoint", prompts: list[str], *, per_prompt: int, guidance: float, steps: int,
                 seed: int, device: str = "auto", progress: ProgressFn = None) -> ImageSet:
    """``per_prompt`` images the model draws for each prompt (DDIM), captioned with their prompt."""
    from unlearnctl.sampling import generate_from_prompts

    images = generate_from_prompts(checkpoint, prompts, per_prompt=per_prompt, steps=steps, sampler="ddim",
                                   guidance=guidance, seed=seed, device=device, progress=progress)
    return ImageSet(images.cpu(), None, list(checkpoint.data.get("class_names") or []),
                    [prompt for prompt in prompts for _ in range(per_prompt)])


def text_split(checkpoint: "Checkpoint", split: "DataSplit") -> "DataSplit":
    """``split`` refused (exit 2) unless its images are the size and channels ``checkpoint`` draws, with every
    train and held-out image captioned as the model trained on it (stored captions, else the generated ones from
    the seed of its ``train`` entry): the data every forget set of a text-to-image model is resolved on."""
    from unlearnctl.text_to_image import caption_seed, captioned_split, check_text_data

    check_text_data(split.description, checkpoint)
    return captioned_split(split, caption_seed(checkpoint))


def resolve_captioned(spec: "ForgetSpec", split: "DataSplit", drawn: ImageSet | None = None) -> "ForgetSet":
    """:func:`unlearnctl.data.resolve_forget` on a :func:`text_split` (classes, indices, the canary, prompts by exact
    caption, ``--forget-images``, and ``drawn``), refusing forget images without captions: a text-to-image model
    forgets, and is scored on, image–caption pairs."""
    from unlearnctl.data import resolve_forget

    forget_set = resolve_forget(spec, split, drawn)
    require(forget_set.forget.captions is not None,  # the split's and drawn images have captions: --forget-images lack them
            f"--forget-images {spec.images} have no captions, and every forget image of a text-to-image model needs its "
            "caption: give a folder with metadata.jsonl (file_name, text) or a .txt beside each image, or an .npz with "
            "'captions'")
    return forget_set


def prompt_images(checkpoint: "Checkpoint", spec: "ForgetSpec", split: "DataSplit", *, prompt_samples: int,
                  prompt_guidance: float, seed: int, device: str = "auto", progress: ProgressFn = None) -> ImageSet | None:
    """Unlearning's own step: ``prompt_samples`` images ``checkpoint`` draws (50 DDIM steps) for each forget prompt
    of ``spec``, captioned with it — a concept by prompt is its exactly-captioned training images plus these
    (SalUn's and EraseDiff's Stable Diffusion setting). ``None`` without prompts or with ``prompt_samples = 0``
    (then a training image of ``split`` must carry a forget prompt as its caption)."""
    if not spec.prompts:
        return None
    require(all(prompt.strip() for prompt in spec.prompts), "a forget prompt is empty; name the concept to forget")
    require(prompt_samples >= 1 or any(c in spec.prompts for c in split.train.captions),
            "no training image is captioned with the forget prompt, and --prompt-samples 0 draws none; "
            "draw images of the concept with --prompt-samples N")
    if not prompt_samples:
        return None
    return drawn_images(checkpoint, list(spec.prompts), per_prompt=prompt_samples, guidance=prompt_guidance,
                        steps=50, seed=seed, device=device, progress=progress)


def text_forget_set(checkpoint: "Checkpoint", spec: "ForgetSpec", split: "DataSplit", *, prompt_samples: int,
                    prompt_guidance: float, seed: int, device: str = "auto",
                    progress: ProgressFn = None) -> tuple["DataSplit", "ForgetSet"]:
    """The captioned split and the forget set a text-to-image model unlearns (the module doc says how):
    :func:`text_split`, then :func:`resolve_captioned` with the :func:`prompt_images` of the forget prompts."""
    split = text_split(checkpoint, split)
    drawn = prompt_images(checkpoint, spec, split, prompt_samples=prompt_samples, prompt_guidance=prompt_guidance,
                          seed=seed, device=device, progress=progress)
    return split, resolve_captioned(spec, split, drawn)


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
