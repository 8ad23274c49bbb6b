"""Import from and export to diffusers ``save_pretrained`` folders (safetensors only)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from unlearnctl.checkpoint.model import Checkpoint, default_scheduler, lineage_entry, plain_config
from unlearnctl.errors import BadInputError, cause_of, require

def export_diffusers(checkpoint: Checkpoint, directory: str | Path) -> Path:
    """Write a diffusers ``save_pretrained`` folder (``unet/``, ``scheduler/``, ``model_index.json``).

    Unconditional models load with ``DDPMPipeline.from_pretrained``; every model loads with
    ``UNet2DModel.from_pretrained(directory, subfolder="unet")``. ``unlearnctl.json`` keeps the data
    description and lineage. The folder appears whole or not at all.
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    directory = Path(directory)
    require(not directory.exists() or (directory.is_dir() and not any(directory.iterdir())),
            f"export folder {directory} exists and is not empty; choose a new folder")
    parent = directory.parent if str(directory.parent) else Path(".")
    require(parent.is_dir() and os.access(parent, os.W_OK), f"folder {parent} does not exist or is not writable")
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{directory.name}."))
    try:
        pipeline = DDPMPipeline(unet=checkpoint.build_unet(), scheduler=DDPMScheduler.from_config(checkpoint.scheduler_config))
        pipeline.save_pretrained(staging, safe_serialization=True)
        sidecar = {"data": checkpoint.data, "lineage": checkpoint.lineage, "source_sha256": checkpoint.sha256}
        (staging / "unlearnctl.json").write_text(json.dumps(sidecar, indent=2))
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def import_diffusers(directory: str | Path, data: dict[str, Any], source: str | None = None) -> Checkpoint:
    """Read a diffusers folder (pipeline layout with ``unet/`` or a bare UNet folder), safetensors only."""
    from diffusers import DDPMScheduler, UNet2DModel

    directory = Path(directory)
    require(directory.is_dir(), f"diffusers folder {directory} does not exist")
    unet_dir = directory / "unet" if (directory / "unet").is_dir() else directory
    require((unet_dir / "config.json").is_file(), f"{unet_dir} has no config.json; is it a diffusers save_pretrained folder?")
    require(any(unet_dir.glob("*.safetensors")),
            f"{unet_dir} has no .safetensors weights; pickle weights (.bin) are refused because loading them can run code")
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True)
    except Exception as exc:
        raise BadInputError(f"diffusers could not load {unet_dir}: {cause_of(exc)}") from None
    scheduler_dir = directory / "scheduler"
    scheduler = (DDPMScheduler.from_pretrained(scheduler_dir) if (scheduler_dir / "scheduler_config.json").is_file()
                 else default_scheduler())
    from unlearnctl.diffusion import check_prediction_type

    check_prediction_type(scheduler.config.get("prediction_type", "epsilon"))  # kept: every loss follows it
    entry = lineage_entry("import", {"source": str(source or directory)}, seed=None, wall_time_s=0.0)
    return Checkpoint(
        state_dict={k: v.detach().clone() for k, v in unet.state_dict().items()},
        unet_config=plain_config(unet.config),
        scheduler_config=plain_config(scheduler.config),
        data=data,
        lineage=[entry],
    )
