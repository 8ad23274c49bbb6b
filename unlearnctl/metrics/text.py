"""Evaluating text-to-image models: forget sets, prompts and the sample layout (docs/text-to-image.md).

A text-to-image model is conditioned on prompts, not class labels; evaluation maps the pixel evaluation's
layout onto prompts, so the metric groups of :mod:`unlearnctl.metrics.evaluate` score both alike.

* **A concept** (``--forget-class 8``, ``--forget-prompt TEXT``): a class of the data. Its forget prompts are
  the given prompts, or for ``--forget-class`` every caption wording of the class
  (:func:`unlearnctl.captions.class_captions`). A prompt's class is the class one of whose caption wordings or
  training captions is exactly that prompt, else ``--concept-class``. The forget set is the class's training
  images (as a pixel class); ``forget_rate`` is the share of samples for the forget prompts that the classifier
  assigns to the concept's class (:func:`~unlearnctl.metrics.forget.class_forget_counts`).
* **Memorised images** (``--forget-index``, ``--forget-canary``, ``--forget-images`` with captions): the forget
  prompts are the forget images' distinct captions; ``forget_rate`` (data mode) is the share of samples within
  the calibrated distance of a forget image (:func:`~unlearnctl.metrics.forget.data_forget_threshold`) — the
  memorisation rate of SISS's Stable Diffusion experiment.
* **Layout** (:func:`text_sample_plan`): ``num_samples`` split evenly over the conditions, as the pixel evaluation
  splits them over classes: one condition per retained class (prompted with :func:`~unlearnctl.captions.class_prompt`),
  one per concept class (its forget prompts, cycled), and for memorised images one for their captions (which
  takes the place of a forgotten class such as the canary). Unlabelled data: one retained condition cycling over
  the retain set's distinct captions.

Captions: data without stored captions (the digits) get the ones the model trained on, regenerated from the
training run's seed (:func:`unlearnctl.text_to_image.training_captions`); held-out images get captions drawn the
same way, so the membership audit conditions members and non-members alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from unlearnctl.data import ForgetSet, ForgetSpec, ImageSet, class_index, resolve_forget
from unlearnctl.errors import BadInputError, require

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import DataSplit
    from unlearnctl.metrics.classifier import DomainClassifier

MEMORISED = -1  # label of the sample rows of memorised images' captions (no single class)


@dataclass
class TextForgetSet(ForgetSet):
    """A :class:`~unlearnctl.data.ForgetSet` of a text-to-image model, with the prompts of its forget condition.

    Attributes:
        prompts: forget condition → its prompts: concept class id → forget prompts (class mode), or
            :data:`MEMORISED` (or the canary's class id) → the forget images' distinct captions (data mode).
    """

    prompts: dict[int, list[str]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prompts": {str(k): v for k, v in self.prompts.items()}}


@dataclass
class TextPlan:
    """The sample rows of a text-to-image evaluation: prompt, label (class, or :data:`MEMORISED`), masks."""

    prompts: list[str]
    labels: torch.Tensor  # [N] long
    retain: torch.Tensor  # [N] bool: rows of retained classes' prompts (quality, retain accuracy, CLIP score)
    forget: torch.Tensor  # [N] bool: rows of forget prompts (forget rate)


# --------------------------------------------------------------------------------------------- forget set


def concept_class(prompt: str, train: ImageSet, given: str | None = None) -> int:
    """The class a forget prompt names: ``given`` (``--concept-class``), else the one class one of whose caption
    wordings (:func:`~unlearnctl.captions.class_captions`) or training captions is exactly ``prompt``."""
    from unlearnctl.captions import class_captions

    names = list(train.class_names or [])
    if given is not None:
        return class_index(str(given), names)
    found = {i for i, name in enumerate(names) if prompt in class_captions(name)}
    if train.captions is not None and train.labels is not None:
        found |= {int(label) for caption, label in zip(train.captions, train.labels.tolist()) if caption == prompt and label >= 0}
    if len(found) == 1:
        return found.pop()
    what = "no class's captions are" if not found else f"the captions of classes {', '.join(names[i] for i in sorted(found))} are all"
    raise BadInputError(f"forget prompt {prompt!r}: {what} exactly this prompt, so its concept's class is unknown; "
                        f"pass --concept-class NAME (classes: {', '.join(names) or 'none'})")


def concept_prompts(spec: ForgetSpec, train: ImageSet, concept: str | None = None) -> dict[int, list[str]]:
    """Evaluation's own step: the classes a concept spec names, each with its forget prompts — a ``--forget-class``
    with every caption wording of the class (:func:`~unlearnctl.captions.class_captions`), a ``--forget-prompt``
    under its :func:`concept_class` (``concept``: ``--concept-class``). Sorted by class; prompts once each, in order.
    The concept's forget set is then these classes' training images, and its forget rate the share of samples for
    the prompts that the classifier assigns to them."""
    from unlearnctl.captions import class_captions

    require(train.labels is not None and len(train.class_names or []) >= 2, "a concept's forget rate is scored by a "
            "classifier of the data's classes; this data has no classes (forget memorised images instead)")
    prompts: dict[int, list[str]] = {}
    for name in spec.classes:
        c = class_index(str(name), train.class_names)
        prompts.setdefault(c, []).extend(class_captions(train.class_names[c]))
    for prompt in spec.prompts:
        prompts.setdefault(concept_class(prompt, train, concept), []).append(prompt)
    return {c: list(dict.fromkeys(p)) for c, p in sorted(prompts.items())}


def resolve_text_forget(spec: ForgetSpec, split: "DataSplit", concept: str | None = None) -> TextForgetSet:
    """Resolve ``spec`` for evaluating a text-to-image model on a
    :func:`~unlearnctl.text_unlearning.text_split` (see the module docstring).

    A concept (classes, prompts) is the classes of :func:`concept_prompts`, resolved as a class forget set; memorised
    images (indices, canary, images) are :func:`~unlearnctl.text_unlearning.resolve_captioned`'s forget set, with
    their distinct captions as the forget prompts. The two are evaluated separately: a spec with both is refused.
    ``--forget-images`` must carry captions (metadata.jsonl, .txt files or npz ``captions``).
    """
    from unlearnctl.text_unlearning import resolve_captioned

    require(not spec.empty, "the forget set is empty; give --forget-class, --forget-prompt, --forget-index, "
            "--forget-canary or --forget-images")
    concept_spec = bool(spec.classes or spec.prompts)
    data_spec = bool(spec.indices or spec.canary or spec.images)
    require(not (concept_spec and data_spec), "a text-to-image model is evaluated on a concept (--forget-class, "
            "--forget-prompt) or on memorised images (--forget-index, --forget-canary, --forget-images), one at a time; "
            "evaluate them separately")
    require(concept is None or bool(spec.prompts), "--concept-class names the class of --forget-prompt concepts; "
            "give --forget-prompt TEXT with it")
    if concept_spec:
        prompts = concept_prompts(spec, split.train, concept)
        classes = resolve_forget(ForgetSpec(classes=tuple(split.train.class_names[c] for c in prompts)), split)
        return TextForgetSet("class", classes.train_mask, classes.forget, classes.retain, classes.class_ids, spec, prompts)
    memorised = resolve_captioned(spec, split)
    captions = list(dict.fromkeys(memorised.forget.captions))
    class_ids = memorised.class_ids
    key = class_ids[0] if len(class_ids) == 1 else MEMORISED  # the canary's rows take its class's place
    return TextForgetSet("data", memorised.train_mask, memorised.forget, memorised.retain, class_ids, spec, {key: captions})


# --------------------------------------------------------------------------------------------- sample layout


def _conditions(reference: ImageSet, forget_set: TextForgetSet | None) -> list[tuple[int, list[str], bool]]:
    """``(label, prompts, is_forget)`` of every condition, in sampling order (see the module docstring)."""
    from unlearnctl.captions import class_prompt

    forget = dict(forget_set.prompts) if forget_set is not None else {}
    excluded = set(forget_set.class_ids) if forget_set is not None else set()
    names = list(reference.class_names or [])
    conditions = []
    if reference.labels is not None and names:
        for c, name in enumerate(names):
            if c in forget:
                conditions.append((c, forget.pop(c), True))
            elif c not in excluded:
                conditions.append((c, [class_prompt(name)], False))
    else:
        require(reference.captions is not None and len(reference) > 0, "the retained images have no captions to prompt with")
        conditions.append((MEMORISED, list(dict.fromkeys(reference.captions)), False))
    conditions += [(label, prompts, True) for label, prompts in forget.items()]
    return conditions


def text_sample_plan(reference: ImageSet, forget_set: TextForgetSet | None, num_samples: int) -> TextPlan:
    """``num_samples`` rows split evenly over the conditions (the first ``num_samples mod K`` get one more), each
    condition cycling over its prompts. ``reference``: the retained images (their classes or captions)."""
    conditions = _conditions(reference, forget_set)
    require(num_samples >= len(conditions), f"--num-samples {num_samples} is below the {len(conditions)} conditions to "
            f"sample; use at least {len(conditions)}")
    prompts, labels, forget = [], [], []
    for i, (label, texts, is_forget) in enumerate(conditions):
        count = num_samples // len(conditions) + (i < num_samples % len(conditions))
        prompts += [texts[j % len(texts)] for j in range(count)]
        labels += [label] * count
        forget += [is_forget] * count
    forget_mask = torch.tensor(forget, dtype=torch.bool)
    return TextPlan(prompts, torch.tensor(labels, dtype=torch.long), ~forget_mask, forget_mask)


def sample_prompt_rows(network: torch.nn.Module, checkpoint: "Checkpoint", prompts: list[str], **sampling: Any) -> torch.Tensor:
    """One image per prompt row from ``network`` (the checkpoint's UNet, or one under training):
    :func:`unlearnctl.sampling.generate_from_prompts` with ``per_prompt=1`` (guidance 1 and DDIM unless given)."""
    from unlearnctl.sampling import generate_from_prompts

    return generate_from_prompts(checkpoint, prompts, per_prompt=1, network=network,
                                 **{"guidance": 1.0, "sampler": "ddim", **sampling})


# --------------------------------------------------------------------------------------------- probes


def text_evaluation_samples(forget_set: TextForgetSet, num_samples: int) -> int:
    """The ``evaluate --num-samples`` giving each forget condition ``ceil(num_samples / forget conditions)`` rows."""
    require(num_samples >= 1, f"number of samples must be at least 1, got {num_samples}")
    conditions = _conditions(forget_set.retain, forget_set)
    per_condition = -(-num_samples // sum(1 for _, _, is_forget in conditions if is_forget))
    return per_condition * len(conditions)


def measure_text_forgetting(
    network: torch.nn.Module,
    checkpoint: "Checkpoint",
    forget_set: TextForgetSet,
    *,
    classifier: "DomainClassifier | None" = None,
    threshold: float | None = None,
    num_samples: int = 200,
    steps: int = 25,
    sampler: str = "ddim",
    guidance: float = 1.0,
    seed: int = 0,
    batch_size: int = 500,
    eval_num_samples: int | None = None,
) -> dict[str, Any]:
    """The forget rate of a text-to-image model as ``evaluate`` scores it, sampling only the forget rows.

    The samples are the forget-condition rows of ``evaluate --num-samples eval_num_samples --steps steps --seed
    seed --guidance guidance --sampler sampler`` (default ``eval_num_samples``: :func:`text_evaluation_samples`
    of ``num_samples``): the same prompts and the same rows of the same seeded initial latents, so with DDIM the
    rate equals that evaluation's ``forget_rate`` (up to floating-point differences of batch composition).
    ``network`` may be under training (eval mode while sampling, its mode restored). Class mode needs
    ``classifier``; data mode uses ``threshold`` (calibrated from the forget and retain images if ``None``).

    Returns ``forget_rate`` with ``_count``, ``_n``, ``_ci95_low``/``_ci95_high`` (Wilson 95%), ``num_samples``,
    ``mode``, ``eval_num_samples`` and, in data mode, ``threshold`` — as
    :func:`~unlearnctl.metrics.forget.measure_forgetting`, which calls this for text-to-image models.
    """
    from unlearnctl.metrics.forget import probe_noise, score_probe

    require(isinstance(forget_set, TextForgetSet), "a text-to-image model's forget set comes from "
            "unlearnctl.metrics.text.resolve_text_forget (its prompts)")
    if eval_num_samples is None:
        eval_num_samples = text_evaluation_samples(forget_set, num_samples)
    plan = text_sample_plan(forget_set.retain, forget_set, eval_num_samples)
    rows = torch.nonzero(plan.forget).flatten()
    noise = probe_noise(network, eval_num_samples, rows, seed)  # evaluate's initial latents of these rows
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            images = sample_prompt_rows(network, checkpoint, [plan.prompts[i] for i in rows.tolist()], steps=steps,
                                        sampler=sampler, guidance=guidance, seed=seed, batch_size=batch_size, noise=noise)
    finally:
        network.train(was_training)
    return score_probe(images, forget_set, classifier, threshold, eval_num_samples)
