"""``UNet2DModel`` size presets.

``tiny`` is for tests (seconds per hundred steps on a laptop CPU), ``small`` is the default for the 8×8
digits, ``medium`` and ``large`` are for user data at 16–64 px. Attention sits at the lowest resolution
only, where it is cheap. Any key can be overridden with a full config (``--unet-config FILE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlearnctl.errors import BadInputError, require

PRESETS: dict[str, dict[str, Any]] = {
    # block_out_channels: width per resolution level; len = number of levels (each halves H and W)
    "tiny": {"block_out_channels": (16, 32), "layers_per_block": 1, "attention": False, "norm_num_groups": 8},
    "small": {"block_out_channels": (32, 64), "layers_per_block": 1, "attention": True, "norm_num_groups": 8},
    "medium": {"block_out_channels": (64, 128, 128), "layers_per_block": 2, "attention": True, "norm_num_groups": 32},
    "large": {"block_out_channels": (64, 128, 256, 256), "layers_per_block": 2, "attention": True, "norm_num_groups": 32},
}


def unet_config(
    preset: str = "small",
    *,
    resolution: int,
    channels: int,
    num_classes: int | None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A diffusers ``UNet2DModel`` config for ``preset``; ``num_classes`` set = class-conditional.

    Conditional models get ``num_classes + 1`` class embeddings: the last one is the null class used for
    label dropout and classifier-free guidance.
    """
    spec = check_preset(preset)
    levels = len(spec["block_out_channels"])
    require(resolution % 2 ** (levels - 1) == 0 and resolution >= 2 ** levels,
            f"model size {preset!r} needs a resolution divisible by {2 ** (levels - 1)} and at least {2 ** levels}, got {resolution}")
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if spec["attention"]:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    config = {
        "sample_size": resolution,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": list(spec["block_out_channels"]),
        "layers_per_block": spec["layers_per_block"],
        "down_block_types": down,
        "up_block_types": up,
        "norm_num_groups": spec["norm_num_groups"],
        "attention_head_dim": 8,
        "num_class_embeds": None if num_classes is None else num_classes + 1,
    }
    config.update(overrides or {})
    return config


def check_preset(preset: str) -> dict[str, Any]:
    if preset not in PRESETS:
        raise BadInputError(f"unknown model size {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def read_config_file(path: str | Path) -> dict[str, Any]:
    from unlearnctl.jsonfile import read_json_object

    return read_json_object(path, "UNet config file")
