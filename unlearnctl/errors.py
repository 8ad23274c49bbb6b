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
