"""Relearning attacks and the registry of their auxiliary data sources.

DiMRA (Yuan et al., arXiv 2512.03564) fine-tunes an unlearned model on auxiliary data that contains
none of the forgotten elements and measures whether they come back (:mod:`unlearnctl.attacks.dimra`).
Where the auxiliary data comes from is a registered *source*, named in an ``--aux`` spec:

=====================  ================================================================================
spec                   auxiliary data
=====================  ================================================================================
``retain[:FRACTION]``  a seeded subset (default all) of the recorded training data minus every forget
                       set in the checkpoint's lineage — the paper's first setting, the retain set
``generated[:COUNT]``  images the attacked model itself generates (default 1000, DDIM), balanced over
                       every class that was not forgotten; unconditional models sample freely — the
                       paper's second setting, no outside data needed
``folder:PATH``        an image folder (class sub-folders named like the model's classes)
``npz:PATH``           an ``.npz`` with ``images`` (uint8) and, for conditional models, ``labels``
=====================  ================================================================================

Text-to-image models fine-tune on image–caption pairs: ``retain`` keeps the training captions, ``generated``
samples the retained prompts (each retained class's :func:`~unlearnctl.captions.class_prompt`, or for unlabelled
data the retained images' captions) and captions each image with its prompt, ``folder``/``npz`` need captions
(``metadata.jsonl``, ``.txt`` files, npz ``captions``).

Every source goes through :mod:`unlearnctl.attacks.guard`: exact and near copies of forget images — and, for
text-to-image models, captions equal to a forget prompt — are dropped from the sources the tool builds itself
and refused in sources the user gives.

``get_aux_source(name)`` returns a registered source; unknown names raise :class:`BadInputError` listing
the valid ones. The CLI's ``--aux`` help comes from here. Torch is imported inside function bodies only,
so ``unlearnctl --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from unlearnctl.errors import BadInputError

if TYPE_CHECKING:
    import torch

    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import DataSplit, ForgetSet, ImageSet
    from unlearnctl.progress import ProgressFn


@dataclass
class AuxContext:
    """What a source may use to build its auxiliary set.

    Attributes:
        checkpoint: the model under attack (``generated`` samples from it; labels map to its classes).
        split: the model's recorded training data (members), reloaded and fingerprint-checked; for text-to-image
            models with every training image's caption (:func:`~unlearnctl.text_to_image.captioned_split`).
        forget_sets: every forget set the lineage records (plus the curve's): what must stay out.
        seed: seeds subsets and generation.
        num_generated: default image count of ``generated``.
        generate_steps: DDIM steps of ``generated``.
        device: where ``generated`` samples.
        progress: progress callback.
    """

    checkpoint: "Checkpoint"
    split: "DataSplit"
    forget_sets: list["ForgetSet"]
    seed: int = 0
    num_generated: int = 1000
    generate_steps: int = 50
    device: "torch.device | str" = "cpu"
    progress: "ProgressFn" = None

    @property
    def forgotten_classes(self) -> list[int]:
        """Class indices some forget set removes (class forgetting and the canary)."""
        return sorted({c for forget_set in self.forget_sets for c in forget_set.class_ids})

    @property
    def forget_captions(self) -> set[str]:
        """Captions no auxiliary pair may carry: every forget prompt and every forget image's caption."""
        captions = {prompt for forget_set in self.forget_sets for prompt in forget_set.spec.prompts}
        for forget_set in self.forget_sets:
            captions.update(forget_set.forget.captions or ())
        return captions

    def excluded_mask(self) -> "torch.Tensor":
        """Bool mask over ``split.train``: True = in some forget set."""
        import torch

        mask = torch.zeros(len(self.split.train), dtype=torch.bool)
        for forget_set in self.forget_sets:
            mask |= forget_set.train_mask
        return mask


@dataclass(frozen=True)
class AuxSource:
    """A registered source: ``build(arg, context) -> (ImageSet, details)``.

    ``user_data`` sources hold images the user chose: copies of forget images are refused, not dropped.
    """

    name: str
    syntax: str
    help: str
    build: Callable[[str, AuxContext], "tuple[ImageSet, dict[str, Any]]"] = field(repr=False)
    user_data: bool = False


_SOURCES: dict[str, AuxSource] = {}


def register_aux_source(name: str, *, syntax: str, help: str, user_data: bool = False) -> Callable:
    """Function decorator: register ``build(arg, context)`` as the auxiliary source ``name``."""

    def decorate(build: Callable) -> Callable:
        if name in _SOURCES and _SOURCES[name].build is not build:
            raise ValueError(f"aux source {name!r} registered twice")  # a programming error, not user input
        _SOURCES[name] = AuxSource(name, syntax, help, build, user_data)
        return build

    return decorate


def available_aux_sources() -> list[str]:
    """Registered source names, in registration order."""
    return list(_SOURCES)


def aux_syntax() -> str:
    """``retain[:FRACTION], generated[:COUNT], ...`` for help texts and errors."""
    return ", ".join(source.syntax for source in _SOURCES.values())


def get_aux_source(name: str) -> AuxSource:
    if name not in _SOURCES:
        raise BadInputError(f"unknown auxiliary source {name!r}; use one of: {aux_syntax()}")
    return _SOURCES[name]


def parse_aux_spec(spec: str) -> tuple[AuxSource, str]:
    """``"retain:0.5"`` → (the ``retain`` source, ``"0.5"``)."""
    name, _, arg = spec.strip().partition(":")
    return get_aux_source(name), arg


# Importing the module registers the sources (order = order in --help).
from unlearnctl.attacks import sources  # noqa: E402,F401
