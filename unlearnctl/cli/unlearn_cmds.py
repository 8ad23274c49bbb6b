"""Commands: unlearn — run an unlearning method."""

from __future__ import annotations

from unlearnctl.cli.app import app  # noqa: F401
