"""Captions for the embedded digits: the text side of the tiny text-to-image default.

Each digit gets a caption from :data:`CAPTION_TEMPLATES`, which name the digit by its word ("eight") or its
numeral ("8") in different wordings, so a text encoder sees both and several phrasings of one class.
:func:`class_prompt` is the one fixed wording evaluation prompts a class with ("a handwritten digit eight").
:func:`caption_words` lists every word the captions use — the vocabulary :func:`unlearnctl.textenc.write_tokenizer`
gives one token each.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# ``{word}`` is the class's word ("eight"), ``{numeral}`` its numeral ("8"); each template uses one of them.
CAPTION_TEMPLATES = (
    "a handwritten digit {word}",
    "a drawing of the number {numeral}",
    "the digit {word}, handwritten",
    "a scan of a handwritten {numeral}",
    "a handwritten {word}",
    "the number {word}",
    "a small picture of the digit {numeral}",
    "digit {numeral}",
)

# For a class that is not a digit 0–9 (``canary``, a folder's class name): ``{name}`` is the class name.
NAME_TEMPLATES = ("a picture of a {name}", "a drawing of a {name}", "a {name}")

PROMPT_TEMPLATE = CAPTION_TEMPLATES[0]  # the wording evaluation prompts a digit with
NAME_PROMPT_TEMPLATE = NAME_TEMPLATES[0]  # ... and any other class


def _is_digit(class_name: str) -> bool:
    return class_name.isdigit() and int(class_name) < len(DIGIT_WORDS)


def _fill(template: str, class_name: str) -> str:
    """A template with the class's word (``eight``), numeral (``8``) or, for other classes, name filled in."""
    if _is_digit(class_name):
        return template.format(word=DIGIT_WORDS[int(class_name)], numeral=class_name)
    return template.format(name=class_name)


def _templates(class_name: str) -> tuple[str, ...]:
    return CAPTION_TEMPLATES if _is_digit(class_name) else NAME_TEMPLATES


def class_prompt(class_name: str) -> str:
    """The prompt evaluation uses for a class: ``class_prompt("8") == "a handwritten digit eight"``,
    ``class_prompt("canary") == "a picture of a canary"``."""
    return _fill(PROMPT_TEMPLATE if _is_digit(class_name) else NAME_PROMPT_TEMPLATE, class_name)


def class_captions(class_name: str) -> tuple[str, ...]:
    """Every caption :func:`digit_captions` can write for a class, :func:`class_prompt`'s wording first:
    ``class_captions("8")[:2] == ("a handwritten digit eight", "a drawing of the number 8")``."""
    return tuple(_fill(template, class_name) for template in _templates(class_name))


def digit_captions(labels: Sequence[int], class_names: Sequence[str], seed: int = 0) -> list[str]:
    """One caption per label, its template drawn at random (deterministic given ``seed``).

    Args:
        labels: class index of each image (``class_names[label]`` is its class, e.g. ``"8"``).
        class_names: the data's class names; digits ``"0"``..``"9"`` get :data:`CAPTION_TEMPLATES` (by word
            and by numeral), any other name (``"canary"``) :data:`NAME_TEMPLATES`.
        seed: seed of the template choice.
    """
    labels = [int(label) for label in labels]
    names = list(class_names)
    if any(not 0 <= label < len(names) for label in labels):
        from unlearnctl.errors import BadInputError

        bad = next(label for label in labels if not 0 <= label < len(names))
        raise BadInputError(f"label {bad} has no class name (classes: {', '.join(names)})")
    draws = np.random.default_rng(seed).random(len(labels))  # one uniform draw per image picks its template
    captions = []
    for label, draw in zip(labels, draws):
        templates = _templates(names[label])
        captions.append(_fill(templates[int(draw * len(templates))], names[label]))
    return captions


def caption_words(class_names: Sequence[str] = tuple(str(i) for i in range(10))) -> list[str]:
    """Every lower-case word of every caption :func:`digit_captions` can write for ``class_names``, sorted.

    Numerals and punctuation are left out: CLIP's tokenizer splits them into single characters, which every
    CLIP vocabulary holds already.
    """
    words: set[str] = set()
    for name in map(str, class_names):
        for template in _templates(name):
            words.update(re.findall(r"[^\W\d_]+", _fill(template, name).lower()))
    return sorted(words)
