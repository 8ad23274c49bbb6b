"""Typed errors and the one table that maps them to exit codes.

The library raises these; only the CLI turns them into a one-line message and an exit code:

| error            | exit | meaning                                              |
|------------------|------|------------------------------------------------------|
| ``BadInputError``| 2    | bad input or usage: the message names the fix        |
| ``RuntimeFailure``| 1   | the run itself failed (NaN loss, divergence, ...)    |
| ``GateFailed``   | 3    | a ``--gate`` condition did not hold                  |
| KeyboardInterrupt| 130  | interrupted; no output written                       |
"""

from __future__ import annotations


class UnlearnctlError(Exception):
    """Base class of every error the tool raises on purpose."""

    exit_code = 1


class BadInputError(UnlearnctlError, ValueError):
    """Input that can never work: a missing file, a bad value, a model/data mismatch."""

    exit_code = 2


class RuntimeFailure(UnlearnctlError, RuntimeError):
    """The computation failed (non-finite loss, divergence) although the input was valid."""

    exit_code = 1


class NonFiniteFailure(RuntimeFailure):
    """A loss, gradient or weight became NaN/Inf during a run.

    Attributes:
        step: optimizer steps completed with finite values (the last good state is after this step).
        weights: the last good weights to save (EMA weights where the run keeps an EMA), or ``None`` when
            no finite copy is left in memory (then the newest ``--checkpoint-every`` state is the last good).
        checkpoint: set by the library entry point: the last good weights as an unsaved checkpoint whose
            lineage entry says where and why the run stopped; the CLI writes it to ``OUT.last-good.safetensors``.
    """

    def __init__(self, message: str, step: int, weights=None):
        super().__init__(message)
        self.step, self.weights, self.checkpoint = step, weights, None


class GateFailed(UnlearnctlError):
    """One or more ``--gate`` conditions failed."""

    exit_code = 3

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("gate failed: " + "; ".join(failures))


def require(condition: bool, message: str) -> None:
    """Raise :class:`BadInputError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise BadInputError(message)


def cause_of(exc: BaseException, limit: int = 200) -> str:
    """The cause an exception from a library gives, as whole sentences on one line, for a one-line message.

    Library messages run to paragraphs (torch's weights-only failure explains how to load the file unsafely
    before it names the cause), and cutting them at a character count leaves half a sentence. This keeps
    the line that names the cause (torch: the ``WeightsUnpickler error``), then as many whole sentences
    of it as fit in ``limit`` characters — always at least the first, whole — without the final full stop.
    """
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # terminal colours some libraries put in messages
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    marker = "WeightsUnpickler error:"
    line = next((ln.split(marker, 1)[1].strip() for ln in lines if marker in ln), lines[0])
    sentences, kept = line.replace(". ", ".\0").split("\0"), ""
    for sentence in sentences:
        if kept and len(kept) + 1 + len(sentence) > limit:
            break
        kept = f"{kept} {sentence}" if kept else sentence
    return kept.rstrip(".").rstrip() or type(exc).__name__
