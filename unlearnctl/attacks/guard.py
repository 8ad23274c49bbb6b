"""The forget-set guard: auxiliary data for a relearning attack never contains a forget-set item.

The attacker of DiMRA does not hold the forget set (docs/attack.md). The tool runs the attack as an auditor
that *does* know it (from the checkpoint's lineage), so it can prove the claim instead of assuming it:

1. **exact copies** — every image is hashed (sha256 of its ``uint8`` pixels); an auxiliary image whose
   hash equals a forget image's hash is a copy of it;
2. **near copies** — an auxiliary image whose pixel-L2 distance to the nearest forget image is within
   the calibrated data-forgetting threshold of :mod:`unlearnctl.metrics.forget` (half the smallest
   distance from any retained training image to a forget image) is a copy too;
3. after the copies are dropped (sources the tool builds itself) or refused (sources the user gives),
   :func:`assert_disjoint` checks that the per-image hash sets of the auxiliary and forget data do not
   intersect, and the attack records both fingerprints and the count of shared images (0) in the lineage;
4. **forget captions** (text-to-image models) — an auxiliary caption equal to a forget prompt (a
   ``--forget-prompt`` of any recorded forget set, or a caption of a forget image) is dropped or refused
   like an image copy (:func:`exclude_forget_captions`), and :func:`assert_captions_disjoint` checks the result.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from unlearnctl.data import ImageSet, to_uint8
from unlearnctl.errors import BadInputError, RuntimeFailure


def image_hashes(images: torch.Tensor) -> list[str]:
    """One hash per image (``N×C×H×W`` in [-1, 1]) of its ``uint8`` pixels and shape; labels ignored."""
    pixels = to_uint8(images)  # N×C×H×W uint8
    shape = str(pixels.shape[1:]).encode()
    return [hashlib.sha256(shape + pixel.tobytes()).hexdigest()[:32] for pixel in pixels]


@dataclass
class CopyReport:
    """Which auxiliary images copy a forget image.

    Attributes:
        exact: bool mask over the auxiliary images, True = pixel-identical to a forget image.
        near: bool mask, True = within ``threshold`` of a forget image but not identical.
        threshold: the near-copy pixel-L2 distance (images in [-1, 1]).
    """

    exact: torch.Tensor
    near: torch.Tensor
    threshold: float

    @property
    def copies(self) -> torch.Tensor:
        return self.exact | self.near


def find_forget_copies(aux: torch.Tensor, forget: torch.Tensor, threshold: float) -> CopyReport:
    """Mark the images of ``aux`` that are exact or near copies of an image of ``forget``."""
    from unlearnctl.metrics.forget import nearest_distance

    forget_hashes = set(image_hashes(forget))
    exact = torch.tensor([h in forget_hashes for h in image_hashes(aux)], dtype=torch.bool)
    near = torch.zeros(len(aux), dtype=torch.bool)
    if len(aux) and threshold > 0:
        near = (nearest_distance(aux, forget) <= threshold) & ~exact
    return CopyReport(exact, near, threshold)


def near_copy_threshold(forget: torch.Tensor, retained: torch.Tensor) -> float:
    """The data-forgetting threshold (docs/metrics.md), calibrated on retained images that are not exact copies."""
    from unlearnctl.metrics.forget import data_forget_threshold

    forget_hashes = set(image_hashes(forget))
    distinct = torch.tensor([h not in forget_hashes for h in image_hashes(retained)], dtype=torch.bool)
    if not bool(distinct.any()):
        return 0.0
    return data_forget_threshold(forget, retained[distinct])


def exclude_forget_copies(aux: ImageSet, forget: torch.Tensor, threshold: float, *, refuse: bool, origin: str
                          ) -> tuple[ImageSet, dict[str, Any]]:
    """Drop (``refuse=False``) or refuse (``refuse=True``: raise) auxiliary images that copy a forget image.

    Returns the cleaned set and what was found, for the lineage.
    """
    found = find_forget_copies(aux.images, forget, threshold)
    num_exact, num_near = int(found.exact.sum()), int(found.near.sum())
    if refuse and (num_exact or num_near):
        first = int(found.copies.nonzero()[0])
        raise BadInputError(
            f"auxiliary data {origin} holds {num_exact} exact and {num_near} near copies of forget-set images "
            f"(first: image #{first}); an attack may not train on the forget set — remove them"
        )
    kept = aux.subset(~found.copies) if (num_exact or num_near) else aux
    return kept, {"dropped_exact_copies": num_exact, "dropped_near_copies": num_near, "near_copy_threshold": threshold}


def assert_disjoint(aux: torch.Tensor, forget: torch.Tensor) -> int:
    """Check that no auxiliary image is pixel-identical to a forget image; returns the shared count (0).

    A failure here is a bug in a source or the guard, never bad input: it raises :class:`RuntimeFailure`
    and nothing is written.
    """
    shared = set(image_hashes(aux)) & set(image_hashes(forget))
    if shared:
        raise RuntimeFailure(f"the auxiliary data shares {len(shared)} images with the forget set; attack aborted")
    return 0


def exclude_forget_captions(aux: ImageSet, forget_captions: set[str], *, refuse: bool, origin: str
                            ) -> tuple[ImageSet, dict[str, Any]]:
    """Drop (``refuse=False``) or refuse (``refuse=True``: raise) auxiliary image–caption pairs whose caption is
    a forget prompt or a forget image's caption (exact string match). Returns the cleaned set and the count."""
    hits = torch.tensor([caption in forget_captions for caption in aux.captions], dtype=torch.bool)
    count = int(hits.sum())
    if refuse and count:
        first = int(hits.nonzero()[0])
        raise BadInputError(
            f"auxiliary data {origin} holds {count} images captioned with a forget prompt (first: image #{first}, "
            f"{aux.captions[first]!r}); an attack may not train on the forget prompts — remove or recaption them"
        )
    return (aux.subset(~hits) if count else aux), {"dropped_forget_captions": count}


def assert_captions_disjoint(captions: list[str], forget_captions: set[str]) -> int:
    """Check that no auxiliary caption is a forget caption; returns the shared count (0). A failure is a bug."""
    shared = set(captions) & forget_captions
    if shared:
        raise RuntimeFailure(f"the auxiliary data holds {len(shared)} forget captions; attack aborted")
    return 0
