"""Reading the JSON files users hand to the tool (configs, baselines, evaluation results)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unlearnctl.errors import BadInputError, require


def read_json_object(path: str | Path, what: str = "", hint: str = "") -> dict[str, Any]:
    """The JSON object in ``path``, or a one-line :class:`BadInputError` naming ``what`` the file was meant to be.

    Args:
        what: the file's role in messages, e.g. ``"UNet config file"``.
        hint: appended to the "not an object" message, e.g. ``" (an evaluate --json result)"``.
    """
    path = Path(path)
    label = f"{what} {path}".strip()
    require(path.is_file(), f"{label} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInputError(f"{label} is not valid JSON") from None
    require(isinstance(data, dict), f"{label} must hold a JSON object{hint}")
    return data
