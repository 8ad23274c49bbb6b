"""The checkpoint in memory: weights, configs, data description and lineage, and how lineage entries are made.

Nothing here mutates a checkpoint's lineage: :meth:`Checkpoint.derive` returns a new checkpoint with a new list.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from unlearnctl.errors import BadInputError, cause_of

@dataclass
class Checkpoint:
    """A model in memory: weights plus the metadata that describes them.

    Args:
        state_dict: UNet weights (``UNet2DModel.state_dict()`` keys).
        unet_config: the diffusers ``UNet2DModel`` config the weights belong to.
        scheduler_config: the diffusers ``DDPMScheduler`` config used in training.
        data: data description (:func:`unlearnctl.data.describe`), including the training-set fingerprint.
        lineage: one dict per command that produced or changed the weights, oldest first.
        path: file the checkpoint was loaded from, if any.
        sha256: sha256 of that file, if any (the ``parent_sha256`` of anything derived from it).
    """

    state_dict: dict[str, torch.Tensor]
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    data: dict[str, Any]
    lineage: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    sha256: str | None = None
    integrity: str | None = None  # the file's ``integrity`` record, as read (``None``: absent or not saved yet)

    @property
    def conditional(self) -> bool:
        return self.unet_config.get("num_class_embeds") is not None

    @property
    def num_classes(self) -> int:
        return len(self.data.get("class_names") or [])

    @property
    def null_class(self) -> int | None:
        """Class index used for the unconditional branch of classifier-free guidance (:func:`null_class_of`);
        ``None`` when the model has none: unconditional, or one class embedding per class."""
        return null_class_of(self.unet_config, self.num_classes)

    def build_unet(self, device: str | torch.device = "cpu") -> "torch.nn.Module":
        """Instantiate the ``UNet2DModel`` and load the weights into it."""
        unet = build_unet(self.unet_config)
        unet.load_state_dict(self.state_dict)
        return unet.to(device)

    def derive(self, state_dict: dict[str, torch.Tensor], entry: dict[str, Any]) -> "Checkpoint":
        """A new checkpoint whose lineage is this one's plus ``entry``.

        The entry names its parent twice: the parent file's sha256 and the hash of the parent's weights as
        they were when this command read them, which must equal the parent entry's ``weights_sha256``
        (``inspect --verify`` checks the chain link without needing the parent file).
        """
        entry = {**entry, "parent_sha256": self.sha256, "parent_weights_sha256": weights_sha256(self.state_dict)}
        return replace(self, state_dict=state_dict, lineage=[*self.lineage, entry], path=None, sha256=None, integrity=None)


def null_class_of(unet_config: dict[str, Any], num_classes: int) -> int | None:
    """The null class of a UNet for data of ``num_classes`` classes: its last class embedding when it has
    ``num_classes + 1`` of them (the layout ``unlearnctl train`` builds, for classifier-free guidance);
    ``None`` when it has one per class (the usual layout of conditional DDPMs: no guidance), when it is
    unconditional, or when the classes are unknown (a model imported without ``--data``)."""
    embeds = unet_config.get("num_class_embeds")
    return embeds - 1 if embeds is not None and num_classes > 0 and embeds == num_classes + 1 else None


def build_unet(unet_config: dict[str, Any]) -> "torch.nn.Module":
    """``UNet2DModel.from_config`` with a one-line error for a config diffusers cannot build."""
    from diffusers import UNet2DModel

    try:
        with quiet_diffusers():
            return UNet2DModel.from_config(unet_config)
    except Exception as exc:  # diffusers raises many types for bad configs
        raise BadInputError(f"UNet config cannot be built by diffusers: {cause_of(exc)}") from None


@contextmanager
def quiet_diffusers():
    """Hold back diffusers' config warnings (e.g. unknown keys): the CLI's stderr is one line per error."""
    import logging

    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def versions() -> dict[str, str]:
    """Library versions recorded in every lineage entry."""
    import diffusers

    import unlearnctl

    return {
        "unlearnctl": unlearnctl.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def now_utc() -> str:
    """ISO timestamp, or ``SOURCE_DATE_EPOCH`` when set (reproducible builds convention)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.isdigit() else time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def reproducible() -> bool:
    """With ``SOURCE_DATE_EPOCH`` set, no wall-clock figures go into files, so reruns are byte-identical."""
    return bool(os.environ.get("SOURCE_DATE_EPOCH"))


def lineage_entry(command: str, params: dict[str, Any], seed: int | None, wall_time_s: float, **extra: Any) -> dict:
    """One lineage entry: what ran, with which parameters, seed, versions and how long it took."""
    return {
        "command": command,
        "params": params,
        "seed": seed,
        **extra,
        "created": now_utc(),
        "wall_time_s": None if reproducible() else round(wall_time_s, 3),
        "versions": versions(),
    }


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Hash of tensor names, dtypes, shapes and bytes: detects weights changed outside the tool."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")  # reshape: 0-d too
    return digest.hexdigest()


def metadata_integrity(checkpoint: Checkpoint) -> str:
    """sha256 over the canonical JSON of configs, data and lineage (which holds the weights hash)."""
    record = {"unet_config": checkpoint.unet_config, "scheduler_config": checkpoint.scheduler_config,
              "data": checkpoint.data, "lineage": checkpoint.lineage}
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def default_scheduler() -> "Any":
    """The training noise schedule: DDPM, ε-prediction, linear β from 1e-4 to 0.02 over 1000 steps."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        prediction_type="epsilon", clip_sample=True,
    )


def plain_config(config: Any) -> dict[str, Any]:
    """A diffusers ``FrozenDict`` config as plain JSON-able dict (drops private ``_`` keys)."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, default=list))
