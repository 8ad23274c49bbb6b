"""Commands: evaluate and classifier — score checkpoints."""

from __future__ import annotations

from unlearnctl.cli.app import app  # noqa: F401
