"""Commands: compare and demo — tables, the report, the full pipeline."""

from __future__ import annotations

from unlearnctl.cli.app import app  # noqa: F401
