"""The auxiliary data sources of the relearning attack (registered in :mod:`unlearnctl.attacks`).

Each source returns an :class:`~unlearnctl.data.ImageSet` whose labels index the model's classes
(``None`` for unconditional models) — for text-to-image models with a caption per image — and a dict of
details for the lineage. The forget-set guard runs
afterwards, in :func:`unlearnctl.attacks.dimra.build_aux_data`, for every source alike.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearnctl.attacks import AuxContext, register_aux_source
from unlearnctl.errors import BadInputError, require

if TYPE_CHECKING:
    from unlearnctl.data import ImageSet


def _parse_number(arg: str, kind: type, what: str, example: str):
    try:
        return kind(arg)
    except ValueError:
        raise BadInputError(f"{what} {arg!r} is not a number; e.g. {example}") from None


def _for_model(images: "ImageSet", context: AuxContext) -> "ImageSet":
    """Unconditional models train without labels; text-to-image models on the captions (labels kept for the counts)."""
    from unlearnctl.data import ImageSet

    checkpoint = context.checkpoint
    return images if checkpoint.conditional or checkpoint.text_conditional else ImageSet(images.images, None, images.class_names)


@register_aux_source("retain", syntax="retain[:FRACTION]",
                     help="a seeded subset (default all) of the recorded training data minus every forget set in the lineage")
def retain_source(arg: str, context: AuxContext) -> tuple["ImageSet", dict[str, Any]]:
    """D_r restricted to a fraction: the recorded train split minus every recorded forget set."""
    import torch

    fraction = _parse_number(arg, float, "retain fraction", "retain:0.25") if arg else 1.0
    require(0.0 < fraction <= 1.0, f"retain fraction must be in (0, 1], got {fraction}; e.g. retain:0.25")
    retain = context.split.train.subset(~context.excluded_mask())
    require(len(retain) > 0, "nothing is left of the training data once the forget sets are removed")
    count = max(1, round(fraction * len(retain)))
    generator = torch.Generator().manual_seed(context.seed)
    chosen = torch.randperm(len(retain), generator=generator)[:count].sort().values
    return _for_model(retain.subset(chosen), context), {"fraction": fraction, "num_retain": len(retain)}


@register_aux_source("generated", syntax="generated[:COUNT]",
                     help="images the attacked model generates itself for every class not forgotten (default 1000, DDIM)")
def generated_source(arg: str, context: AuxContext) -> tuple["ImageSet", dict[str, Any]]:
    """Samples of the attacked model for the conditions it still produces: no outside data at all.

    A class-conditional model is sampled for every class no forget set removed, equally many per class;
    an unconditional model is sampled freely (the guard then drops memorised copies of forget images).
    """
    from unlearnctl.data import ImageSet
    from unlearnctl.diffusion import balanced_labels, sample_images

    count = _parse_number(arg, int, "generated image count", "generated:500") if arg else context.num_generated
    require(count >= 1, f"generated image count must be at least 1, got {count}")
    checkpoint = context.checkpoint
    if checkpoint.text_conditional:
        return _generated_pairs(count, context)
    unet = checkpoint.build_unet(context.device).eval()
    labels, classes = None, None
    if checkpoint.conditional:
        forgotten = set(context.forgotten_classes)
        classes = [c for c in range(checkpoint.num_classes) if c not in forgotten]
        require(bool(classes), "every class of the model is forgotten; nothing to generate auxiliary data from")
        labels = balanced_labels(classes, math.ceil(count / len(classes)))[:count]
    images = sample_images(unet, checkpoint.scheduler_config, num_images=None if labels is not None else count,
                           labels=labels, null_class=checkpoint.null_class, steps=context.generate_steps,
                           seed=context.seed, progress=context.progress)
    names = list(checkpoint.data.get("class_names") or [])
    details = {"count": count, "classes": classes, "sampler": "ddim", "sample_steps": context.generate_steps,
               "guidance": 1.0, "sample_seed": context.seed}
    return ImageSet(images, labels, names), details


def retained_prompts(context: AuxContext) -> tuple[list[str], list[int] | None]:
    """The prompts a text-to-image model still draws, and their classes (``None`` for unlabelled data): each
    class no forget set removes, prompted as evaluation prompts it (:func:`~unlearnctl.captions.class_prompt`),
    or the retained images' distinct captions; forget captions (:attr:`AuxContext.forget_captions`) left out."""
    from unlearnctl.captions import class_prompt

    train, forbidden = context.split.train, context.forget_captions
    if train.labels is not None and train.class_names:
        forgotten = set(context.forgotten_classes)
        pairs = [(class_prompt(name), c) for c, name in enumerate(train.class_names) if c not in forgotten]
        pairs = [(prompt, c) for prompt, c in pairs if prompt not in forbidden]
        return [prompt for prompt, _ in pairs], [c for _, c in pairs]
    retained = train.subset(~context.excluded_mask()).captions or []
    return [prompt for prompt in sorted(set(retained)) if prompt not in forbidden], None


def _generated_pairs(count: int, context: AuxContext) -> tuple["ImageSet", dict[str, Any]]:
    """``count`` samples of a text-to-image model for its retained prompts (equally many each), captioned with them."""
    import torch

    from unlearnctl.data import ImageSet
    from unlearnctl.text_unlearning import drawn_images

    prompts, classes = retained_prompts(context)
    require(bool(prompts), "every prompt of the model is a forget prompt; nothing to generate auxiliary data from")
    per_prompt = math.ceil(count / len(prompts))
    drawn = drawn_images(context.checkpoint, prompts, per_prompt=per_prompt, guidance=1.0, steps=context.generate_steps,
                         seed=context.seed, device=context.device, progress=context.progress)
    if classes is not None:  # each image's class, for the lineage's class counts
        labels = torch.tensor([c for c in classes for _ in range(per_prompt)], dtype=torch.long)
        drawn = ImageSet(drawn.images, labels, drawn.class_names, drawn.captions)
    details = {"count": count, "prompts": prompts, "classes": classes, "sampler": "ddim",
               "sample_steps": context.generate_steps, "guidance": 1.0, "sample_seed": context.seed}
    return drawn.subset(torch.arange(count)), details


UNCAPTIONED_AUX = ("the model is text-to-image, so auxiliary data {spec} needs a caption per image (metadata.jsonl with "
                   "file_name and text, or a .txt beside each image; an npz 'captions' string array)")


def _file_source(kind: str, arg: str, context: AuxContext) -> tuple["ImageSet", dict[str, Any]]:
    import torch

    from unlearnctl.checkpoint.validation import image_shape
    from unlearnctl.data import ImageSet, class_index, read_images

    require(bool(arg), f"auxiliary source {kind} needs a path: {kind}:PATH")
    path = Path(arg)
    checkpoint = context.checkpoint
    resolution, channels = image_shape(checkpoint.unet_config, checkpoint.components)  # latent models: the images they draw
    read = read_images(path, channels=channels, resolution=resolution, role="auxiliary data", kind=kind)  # resized if needed
    images, labels, names = read.images, read.labels, read.class_names
    model_names = list(checkpoint.data.get("class_names") or [])
    if checkpoint.text_conditional:  # fine-tuned on the captions; class folders, if any, are not needed
        require(read.captions is not None, UNCAPTIONED_AUX.format(spec=f"{kind}:{arg}"))
        return ImageSet(images, None, model_names, read.captions), {"path": str(path), "num_files": len(images)}
    mapped = None
    if checkpoint.conditional:
        require(labels is not None, f"the model is class-conditional, so auxiliary data {kind}:{arg} needs labels "
                f"({'class sub-folders' if kind == 'folder' else 'an npz labels array'} for classes {', '.join(model_names)})")
        if kind == "folder":  # sub-folder names are class names
            lookup = torch.tensor([class_index(name, model_names) for name in names])
            mapped = lookup[labels]
        else:  # npz labels are class indices
            require(int(labels.max()) < len(model_names),
                    f"{arg}: label {int(labels.max())} is not a class of the model (0..{len(model_names) - 1})")
            mapped = labels
    return ImageSet(images, mapped, model_names), {"path": str(path), "num_files": len(images)}


@register_aux_source("folder", syntax="folder:PATH", user_data=True,
                     help="an image folder (class sub-folders named like the model's classes for conditional models)")
def folder_source(arg: str, context: AuxContext) -> tuple["ImageSet", dict[str, Any]]:
    return _file_source("folder", arg, context)


@register_aux_source("npz", syntax="npz:PATH", user_data=True,
                     help="an .npz with uint8 'images' (and 'labels' = class indices for conditional models)")
def npz_source(arg: str, context: AuxContext) -> tuple["ImageSet", dict[str, Any]]:
    return _file_source("npz", arg, context)
