"""Commands: relearn-attack — the DiMRA relearning attack."""

from __future__ import annotations

from unlearnctl.cli.app import app  # noqa: F401
