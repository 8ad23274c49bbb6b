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

PROMPT_TEMPLATE = CAPTION_TEMPLATES[0]  # the wording evaluation prompts a class with


def _word_and_numeral(class_name: str) -> tuple[str, str]:
    """``"8"`` → ``("eight", "8")``; a class that is not a digit 0–9 is named by itself in both slots."""
    if class_name.isdigit() and int(class_name) < len(DIGIT_WORDS):
        return DIGIT_WORDS[int(class_name)], class_name
    return class_name, class_name


def class_prompt(class_name: str) -> str:
    """The prompt evaluation uses for a class: ``class_prompt("8") == "a handwritten digit eight"``."""
    word, numeral = _word_and_numeral(class_name)
    return PROMPT_TEMPLATE.format(word=word, numeral=numeral)


def digit_captions(labels: Sequence[int], class_names: Sequence[str], seed: int = 0) -> list[str]:
    """One caption per label, its template drawn at random (deterministic given ``seed``).

    Args:
        labels: class index of each image (``class_names[label]`` is its class, e.g. ``"8"``).
        class_names: the data's class names; digits ``"0"``..``"9"`` become words and numerals,
            any other name (``"canary"``) is used as it is.
        seed: seed of the template choice.
    """
    labels = [int(label) for label in labels]
    names = list(class_names)
    if any(not 0 <= label < len(names) for label in labels):
        from unlearnctl.errors import BadInputError

        bad = next(label for label in labels if not 0 <= label < len(names))
        raise BadInputError(f"label {bad} has no class name (classes: {', '.join(names)})")
    choice = np.random.default_rng(seed).integers(0, len(CAPTION_TEMPLATES), size=len(labels))
    captions = []
    for label, template in zip(labels, choice):
        word, numeral = _word_and_numeral(names[label])
        captions.append(CAPTION_TEMPLATES[int(template)].format(word=word, numeral=numeral))
    return captions


def caption_words(class_names: Sequence[str] = tuple(str(i) for i in range(10))) -> list[str]:
    """Every lower-case word of every caption :func:`digit_captions` can write for ``class_names``, sorted.

    Numerals and punctuation are left out: CLIP's tokenizer splits them into single characters, which every
    CLIP vocabulary holds already.
    """
    words: set[str] = set()
    for name in class_names:
        word, numeral = _word_and_numeral(str(name))
        for template in CAPTION_TEMPLATES:
            words.update(re.findall(r"[^\W\d_]+", template.format(word=word, numeral=numeral).lower()))
    return sorted(words)
