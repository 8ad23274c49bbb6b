"""Helpers of the security, fuzz, bad-input and reliability tests (``tests/test_security*.py`` etc.).

They build models without training (an untrained tiny UNet has the same files, configs and lineage
as a trained one), so these tests do not pay for the session-trained fixtures.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import torch

UNLEARNCTL = [sys.executable, "-c", "from unlearnctl.cli.app import main; main()"]


def untrained_checkpoint(split, conditional: bool = True, seed: int = 0):
    """A tiny ``UNet2DModel`` at its random initialisation, described like a ``train`` output."""
    from unlearnctl.checkpoint import Checkpoint, build_unet, default_scheduler, lineage_entry, plain_config
    from unlearnctl.models import unet_config
    from unlearnctl.training import TrainConfig

    desc = split.description
    config = unet_config("tiny", resolution=desc["resolution"], channels=desc["channels"],
                         num_classes=len(desc["class_names"]) if conditional else None)
    torch.manual_seed(seed)
    unet = build_unet(config)
    train = TrainConfig(steps=1, batch_size=8, lr=2e-3, warmup_steps=1, seed=seed)
    params = {"preset": "tiny", "conditional": conditional, "unet_overrides": {}, "train": train.to_dict(),
              "num_train_images": len(split.train)}
    entry = lineage_entry("train", params, seed, 0.0, data_fingerprint=split.train.fingerprint, forget=None)
    weights = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    return Checkpoint(weights, config, plain_config(default_scheduler().config), desc, [entry])


def run_cli_process(*args, timeout: float = 120, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``unlearnctl ARGS`` in a fresh Python process (what a user's shell runs)."""
    return subprocess.run([*UNLEARNCTL, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.strip().splitlines() if line.strip()]


def split_file(raw: bytes) -> tuple[dict, bytes]:
    """A safetensors file's parsed JSON header and its data bytes."""
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def build_file(header: dict | bytes, data: bytes) -> bytes:
    """A safetensors file from a header (a dict, or raw bytes used as they are) and data bytes."""
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if not isinstance(header, bytes):
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data
