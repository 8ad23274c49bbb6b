"""Forget rate and retain accuracy (docs/metrics.md).

* Class forgetting: the share of samples generated for the forgotten condition (or, for an unconditional
  model, of all samples) that the domain classifier assigns to a forgotten class.
* Data forgetting: the share of samples whose nearest forget image lies within a calibrated pixel-L2
  distance — half the smallest distance from any retain image to a forget image, so a sample counts only
  if it is twice as close to a forget image as any real retained image is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from unlearnctl.data import NO_CLASS_FOR_FORGET_IMAGES
from unlearnctl.diffusion import sample_images
from unlearnctl.errors import require

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import ForgetSet
    from unlearnctl.metrics.classifier import DomainClassifier

THRESHOLD_FRACTION = 0.5  # threshold = this × min distance(retain image, forget image)
CONFIDENT_PROBABILITY = 0.9  # forget_confident_rate: a forgotten class with probability above this


def class_forget_rate(images: torch.Tensor, class_ids: list[int], classifier: "DomainClassifier") -> float:
    """Share of ``images`` the classifier assigns to one of ``class_ids``."""
    counts = class_forget_counts(images, class_ids, classifier)
    return counts["hits"] / counts["n"]


def class_forget_counts(images: torch.Tensor, class_ids: list[int], classifier: "DomainClassifier") -> dict[str, Any]:
    """Counts behind the class-mode forget figures of ``images`` (``N×C×H×W``).

    Returns ``n`` (images), ``hits`` (argmax is a forgotten class), ``confident`` (some forgotten class has
    softmax probability > :data:`CONFIDENT_PROBABILITY`, so it is also the argmax) and ``mean_probability``
    (mean over images of the total probability of the forgotten classes). A model whose forget samples got
    worse rather than forgotten keeps some argmax hits but few confident ones and a low mean probability.
    """
    require(len(images) > 0, "no images to score")
    probabilities = classifier.probabilities(images, max(class_ids) + 1 if class_ids else None)  # N×data classes
    ids = torch.tensor(class_ids)
    hits = torch.isin(classifier.predict(images), ids)  # the argmax over the classifier's own classes
    forgotten = probabilities[:, ids]  # N×len(class_ids)
    confident = forgotten.max(dim=1).values > CONFIDENT_PROBABILITY
    return {"n": len(images), "hits": int(hits.sum()), "confident": int(confident.sum()),
            "mean_probability": float(forgotten.sum(dim=1).mean())}


def retain_accuracy(images: torch.Tensor, labels: torch.Tensor, classifier: "DomainClassifier") -> float:
    """Share of ``images`` classified as the condition they were generated for."""
    return retain_hits(images, labels, classifier) / len(images)


def retain_hits(images: torch.Tensor, labels: torch.Tensor, classifier: "DomainClassifier") -> int:
    """How many ``images`` are classified as the condition they were generated for."""
    require(len(images) > 0, "no images to score")
    return int((classifier.predict(images) == labels).sum())


def _unique(images: torch.Tensor) -> torch.Tensor:
    return torch.unique(images.flatten(1), dim=0)


def nearest_distance(images: torch.Tensor, references: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Pixel-L2 distance (images in [-1, 1]) from each image to its nearest reference, shape ``[N]``."""
    references = _unique(references).float()
    flat = images.flatten(1).float()
    return torch.cat([torch.cdist(flat[i:i + batch_size], references).min(dim=1).values for i in range(0, len(flat), batch_size)])


def data_forget_threshold(forget_images: torch.Tensor, retain_images: torch.Tensor) -> float:
    """Calibrated distance: ``THRESHOLD_FRACTION`` × the smallest retain-to-forget distance."""
    require(len(forget_images) > 0 and len(retain_images) > 0, "need forget and retain images to calibrate a distance")
    return THRESHOLD_FRACTION * float(nearest_distance(retain_images, forget_images).min())


def data_forget_rate(images: torch.Tensor, forget_images: torch.Tensor, threshold: float) -> float:
    """Share of ``images`` within ``threshold`` of a forget image (memorised copies)."""
    require(len(images) > 0, "no images to score")
    return float((nearest_distance(images, forget_images) <= threshold).float().mean())


def data_forget_hits(distances: torch.Tensor, threshold: float) -> int:
    """How many nearest-forget ``distances`` are within ``threshold`` (the data-mode forget rate's count)."""
    return int((distances <= threshold).sum())


def forget_conditions(checkpoint: "Checkpoint", forget_set: "ForgetSet") -> list[int] | None:
    """The labels to sample for the forget condition; ``None`` for unconditional models."""
    if not checkpoint.conditional:
        return None
    if forget_set.class_ids:
        return forget_set.class_ids
    labels = forget_set.forget.labels
    known = sorted({int(c) for c in labels.tolist() if c >= 0}) if labels is not None else []
    require(checkpoint.null_class is not None or labels is None or not bool((labels < 0).any()), NO_CLASS_FOR_FORGET_IMAGES)
    return known or [checkpoint.null_class]


def evaluation_samples(checkpoint: "Checkpoint", forget_set: "ForgetSet", num_samples: int) -> int:
    """The ``evaluate --num-samples`` whose forget-condition rows number at least ``num_samples``: the fewest
    images that, balanced over every condition as :func:`~unlearnctl.metrics.evaluate.evaluate` samples
    them, give each forget condition ``ceil(num_samples / forget conditions)`` rows (unconditional models:
    ``num_samples`` itself)."""
    if checkpoint.text_conditional:
        from unlearnctl.metrics.text import text_evaluation_samples

        return text_evaluation_samples(forget_set, num_samples)
    require(num_samples >= 1, f"number of samples must be at least 1, got {num_samples}")
    conditions = forget_conditions(checkpoint, forget_set)
    if conditions is None:
        return num_samples
    per_condition = -(-num_samples // len(conditions))
    everything = len(set(range(checkpoint.num_classes)) | set(conditions))
    return per_condition * everything  # balanced: every condition gets per_condition rows


def evaluation_forget_rows(checkpoint: "Checkpoint", forget_set: "ForgetSet", eval_num_samples: int
                           ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Labels (``None`` unconditional) and row indices of the forget-condition samples of
    ``evaluate --num-samples eval_num_samples``: the rows of its balanced layout that feed its forget rate."""
    from unlearnctl.metrics.evaluate import _masks, _sample_plan

    labels, forget_ids = _sample_plan(checkpoint, forget_set, eval_num_samples)
    _, forget = _masks(checkpoint, forget_set, labels, eval_num_samples, forget_ids)
    rows = torch.nonzero(forget).flatten()
    return (None if labels is None else labels[rows]), rows


def measure_forgetting(
    unet: torch.nn.Module,
    checkpoint: "Checkpoint",
    forget_set: "ForgetSet",
    *,
    classifier: "DomainClassifier | None" = None,
    threshold: float | None = None,
    num_samples: int = 200,
    steps: int = 25,
    guidance: float = 1.0,
    seed: int = 0,
    batch_size: int = 500,
    eval_num_samples: int | None = None,
) -> dict[str, Any]:
    """Sample for the forget condition and score it exactly as ``evaluate`` does; used by probes and curves.

    The samples are the forget-condition rows of ``evaluate --num-samples eval_num_samples --steps steps
    --seed seed --guidance guidance`` (DDIM): the same labels and the same rows of the same seeded initial
    noise, only those rows generated. DDIM is deterministic given its initial noise, so the forget rate
    equals that evaluation's ``forget_rate`` (up to floating-point differences of batch composition).
    ``eval_num_samples`` defaults to :func:`evaluation_samples` of ``num_samples``.

    ``unet`` may be a model under training: it is put in eval mode and its mode restored afterwards.
    Class mode needs ``classifier``; data mode uses ``threshold`` (calibrated from the data if ``None``).

    Returns ``forget_rate`` with its ``_count``, ``_n`` and 95% Wilson ``_ci95_low``/``_ci95_high``
    (:func:`~unlearnctl.metrics.intervals.rate_fields`), ``num_samples`` (= ``forget_rate_n``), ``mode``,
    ``eval_num_samples`` and, in data mode, ``threshold``.

    Text-to-image models (``forget_set`` from :func:`unlearnctl.metrics.text.resolve_text_forget`): the forget
    prompts' rows of the text evaluation's layout, by :func:`unlearnctl.metrics.text.measure_text_forgetting`.
    """
    if checkpoint.text_conditional:
        from unlearnctl.metrics.text import measure_text_forgetting

        return measure_text_forgetting(unet, checkpoint, forget_set, classifier=classifier, threshold=threshold,
                                       num_samples=num_samples, steps=steps, guidance=guidance, seed=seed,
                                       batch_size=batch_size, eval_num_samples=eval_num_samples)
    if eval_num_samples is None:
        eval_num_samples = evaluation_samples(checkpoint, forget_set, num_samples)
    labels, rows = evaluation_forget_rows(checkpoint, forget_set, eval_num_samples)
    noise = probe_noise(unet, eval_num_samples, rows, seed)
    was_training = unet.training
    unet.eval()
    try:
        images = sample_images(unet, checkpoint.scheduler_config, num_images=None if labels is not None else len(rows),
                               labels=labels, null_class=checkpoint.null_class, steps=steps, guidance=guidance,
                               seed=seed, batch_size=batch_size, noise=noise)
    finally:
        unet.train(was_training)
    return score_probe(images, forget_set, classifier, threshold, eval_num_samples)


def probe_noise(network: torch.nn.Module, eval_num_samples: int, rows: torch.Tensor, seed: int) -> torch.Tensor:
    """The initial noise of ``rows`` in ``evaluate``'s draw for ``eval_num_samples`` images: every row drawn
    from ``seed`` (in ``network``'s input shape), then the given rows kept."""
    require(len(rows) > 0, f"evaluate --num-samples {eval_num_samples} samples no forget-condition image")
    config = network.config
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((eval_num_samples, config.in_channels, config.sample_size, config.sample_size), generator=generator)[rows]


def score_probe(images: torch.Tensor, forget_set: "ForgetSet", classifier: "DomainClassifier | None",
                threshold: float | None, eval_num_samples: int) -> dict[str, Any]:
    """A probe's forget-condition samples scored as the ``forget`` group scores them (:func:`measure_forgetting`'s
    return value)."""
    from unlearnctl.metrics.intervals import rate_fields

    found: dict[str, Any] = {"num_samples": len(images), "mode": forget_set.mode, "eval_num_samples": eval_num_samples}
    if forget_set.mode == "class":
        require(classifier is not None, "class forgetting is measured with the domain classifier; pass one")
        hits = class_forget_counts(images, forget_set.class_ids, classifier)["hits"]
    else:
        if threshold is None:
            threshold = data_forget_threshold(forget_set.forget.images, forget_set.retain.images)
        hits = data_forget_hits(nearest_distance(images, forget_set.forget.images), threshold)
        found["threshold"] = threshold
    return {**rate_fields("forget_rate", hits, len(images)), **found}
