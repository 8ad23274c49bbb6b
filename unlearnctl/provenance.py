"""Summaries and integrity checks of a checkpoint's lineage (``unlearnctl inspect [--verify]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import re

from unlearnctl.checkpoint import Checkpoint, file_sha256, metadata_integrity, weights_sha256

ROOT_COMMANDS = ("train", "import", "retrain")  # entries that start a chain: no parent file
SHA256 = re.compile(r"[0-9a-f]{64}")


def summary(checkpoint: Checkpoint) -> dict[str, Any]:
    """A flat description of the checkpoint for tables and JSON."""
    from unlearnctl.checkpoint.validation import image_shape

    config = checkpoint.unet_config
    resolution, channels = image_shape(config, checkpoint.components)
    return {
        "file": str(checkpoint.path) if checkpoint.path else None,
        "sha256": checkpoint.sha256,
        "family": "text-to-image (latent)" if checkpoint.text_conditional else "pixel",
        "conditional": "text" if checkpoint.text_conditional else checkpoint.conditional,
        "classes": checkpoint.data.get("class_names", []),
        "resolution": resolution,
        "channels": channels,
        **({"latent_size": config.get("sample_size"), "latent_channels": config.get("in_channels")}
           if checkpoint.text_conditional else {}),
        "block_out_channels": config.get("block_out_channels"),
        "parameters": sum(t.numel() for t in checkpoint.state_dict.values()),
        **({"frozen_components": {name: record.get("class") for name, record in checkpoint.components.items()},
            "frozen_parameters": sum(t.numel() for name, t in checkpoint.frozen.items() if not name.startswith("tokenizer/"))}
           if checkpoint.text_conditional else {}),
        "scheduler": {k: checkpoint.scheduler_config.get(k) for k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")},
        "data": checkpoint.data,
        "lineage": checkpoint.lineage,
    }


def verify_checkpoint(checkpoint: Checkpoint, search_dir: Path | None = None) -> list[str]:
    """Problems with the checkpoint's integrity (empty list = verified).

    Checks, in order:

    1. the weights are finite, and the ones the last command wrote (``weights_sha256`` of the newest entry);
    2. the metadata — configs, data description, every lineage entry — is what the tool wrote (the file's
       ``integrity`` record);
    3. the lineage chain: every entry records the hash of the weights it wrote, every entry after the first
       names its parent file (``parent_sha256``), and where it records the hash of the weights it started
       from (``parent_weights_sha256``), that hash is the previous entry's ``weights_sha256``;
    4. for parent files found next to the file (or in ``search_dir``): the parent's lineage is exactly this
       lineage's prefix.
    """
    from unlearnctl.integrity import nonfinite_tensor

    problems = []
    bad = nonfinite_tensor({**checkpoint.state_dict, **checkpoint.frozen})  # first: a broken file is the problem to name, whatever else holds
    if bad is not None:
        problems.append(f"non-finite weights in tensor {bad[0]} ({bad[1]} NaN/Inf values); the file is broken — "
                        "re-export or retrain it")
    lineage = checkpoint.lineage
    if not lineage:
        return problems + ["the lineage is empty: no command recorded producing these weights"]
    recorded = lineage[-1].get("weights_sha256") if isinstance(lineage[-1], dict) else None
    if recorded != weights_sha256(checkpoint.state_dict):
        problems.append("the weights differ from those the last recorded command wrote (changed outside unlearnctl)")
    if checkpoint.components:
        from unlearnctl.checkpoint.components import verify_components

        problems += verify_components(checkpoint.components, checkpoint.frozen)
    if checkpoint.integrity is None:
        problems.append("the file has no integrity record (not written by this unlearnctl, or edited)")
    elif checkpoint.integrity != metadata_integrity(checkpoint):
        problems.append("the metadata (configs, data description or lineage) was changed outside unlearnctl")
    for i, entry in enumerate(lineage):
        if not isinstance(entry, dict) or "command" not in entry:
            problems.append(f"lineage entry {i} is malformed")
            continue
        if not SHA256.fullmatch(str(entry.get("weights_sha256"))):
            problems.append(f"lineage entry {i} ({entry['command']}) records no hash of the weights it wrote")
        if i == 0:
            continue
        if entry.get("command") not in ROOT_COMMANDS and not entry.get("parent_sha256"):
            problems.append(f"lineage entry {i} ({entry['command']}) names no parent file")
        elif entry.get("parent_sha256") is not None and not SHA256.fullmatch(str(entry["parent_sha256"])):
            problems.append(f"lineage entry {i} ({entry['command']}) has a malformed parent_sha256")
        parent_weights = entry.get("parent_weights_sha256")
        previous = lineage[i - 1].get("weights_sha256") if isinstance(lineage[i - 1], dict) else None
        if parent_weights is not None and parent_weights != previous:
            problems.append(f"lineage entry {i} ({entry['command']}) started from other weights than entry {i - 1} wrote "
                            "(broken chain)")
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
