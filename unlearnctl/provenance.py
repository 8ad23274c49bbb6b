"""Summaries and integrity checks of a checkpoint's lineage (``unlearnctl inspect [--verify]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlearnctl.checkpoint import Checkpoint, file_sha256, weights_sha256

ROOT_COMMANDS = ("train", "import", "retrain")  # entries that start a chain: no parent file


def summary(checkpoint: Checkpoint) -> dict[str, Any]:
    """A flat description of the checkpoint for tables and JSON."""
    config = checkpoint.unet_config
    return {
        "file": str(checkpoint.path) if checkpoint.path else None,
        "sha256": checkpoint.sha256,
        "conditional": checkpoint.conditional,
        "classes": checkpoint.data.get("class_names", []),
        "resolution": config.get("sample_size"),
        "channels": config.get("in_channels"),
        "block_out_channels": config.get("block_out_channels"),
        "parameters": sum(t.numel() for t in checkpoint.state_dict.values()),
        "scheduler": {k: checkpoint.scheduler_config.get(k) for k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")},
        "data": checkpoint.data,
        "lineage": checkpoint.lineage,
    }


def verify_checkpoint(checkpoint: Checkpoint, search_dir: Path | None = None) -> list[str]:
    """Problems with the checkpoint's integrity (empty list = verified).

    Checks that the weights are the ones the last command wrote (``weights_sha256``), that every entry
    after a root entry names its parent file, and — for parents found next to the file — that the parent's
    lineage is exactly this lineage's prefix.
    """
    problems = []
    lineage = checkpoint.lineage
    if not lineage:
        return ["the lineage is empty: no command recorded producing these weights"]
    recorded = lineage[-1].get("weights_sha256")
    if recorded != weights_sha256(checkpoint.state_dict):
        problems.append("the weights differ from those the last recorded command wrote (changed outside unlearnctl)")
    for i, entry in enumerate(lineage):
        if not isinstance(entry, dict) or "command" not in entry:
            problems.append(f"lineage entry {i} is malformed")
            continue
        if i > 0 and entry.get("command") not in ROOT_COMMANDS and not entry.get("parent_sha256"):
            problems.append(f"lineage entry {i} ({entry['command']}) names no parent file")
    problems += _check_parents_nearby(checkpoint, search_dir)
    return problems


def _check_parents_nearby(checkpoint: Checkpoint, search_dir: Path | None) -> list[str]:
    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.errors import BadInputError

    folder = search_dir or (checkpoint.path.parent if checkpoint.path else None)
    parents = {entry.get("parent_sha256"): i for i, entry in enumerate(checkpoint.lineage) if entry.get("parent_sha256")}
    if folder is None or not parents:
        return []
    problems = []
    for candidate in sorted(folder.glob("*.safetensors")):
        if candidate == checkpoint.path or candidate.stat().st_size > 2 * 1024**3:
            continue
        digest = file_sha256(candidate)
        if digest not in parents:
            continue
        try:
            parent = load_checkpoint(candidate)
        except BadInputError:
            continue
        position = parents[digest]
        if parent.lineage != checkpoint.lineage[:position]:
            problems.append(f"parent {candidate.name} has a lineage that is not this file's history up to entry {position}")
    return problems
