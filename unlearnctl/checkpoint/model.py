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
        state_dict: the trainable weights: the UNet's (``UNet2DModel`` or ``UNet2DConditionModel`` keys).
        unet_config: the diffusers UNet config the weights belong to (a ``cross_attention_dim`` key marks a
            text-conditional ``UNet2DConditionModel``; :func:`unet_class`).
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
    # Text-to-image models only (:mod:`unlearnctl.checkpoint.components`): what each frozen component is
    # (class, config, sha256) and its tensors, named ``<component>/<key>``. Empty for pixel models.
    components: dict[str, Any] = field(default_factory=dict)
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def text_conditional(self) -> bool:
        """A latent text-to-image model (UNet2DConditionModel + VAE + text encoder + tokenizer)."""
        return bool(self.components)

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
        """Instantiate the UNet (:func:`unet_class`) and load the weights into it."""
        unet = build_unet(self.unet_config)
        unet.load_state_dict(self.state_dict)
        return unet.to(device)

    def derive(self, state_dict: dict[str, torch.Tensor], entry: dict[str, Any], **changed: Any) -> "Checkpoint":
        """A new checkpoint whose lineage is this one's plus ``entry`` (``changed``: other fields replaced, e.g.
        the frozen components a text-to-image retraining trains anew).

        The entry names its parent twice: the parent file's sha256 and the hash of the parent's weights as
        they were when this command read them, which must equal the parent entry's ``weights_sha256``
        (``inspect --verify`` checks the chain link without needing the parent file).
        """
        entry = {**entry, "parent_sha256": self.sha256, "parent_weights_sha256": weights_sha256(self.state_dict)}
        return replace(self, state_dict=state_dict, lineage=[*self.lineage, entry], path=None, sha256=None, integrity=None,
                       **changed)


def null_class_of(unet_config: dict[str, Any], num_classes: int) -> int | None:
    """The null class of a UNet for data of ``num_classes`` classes: its last class embedding when it has
    ``num_classes + 1`` of them (the layout ``unlearnctl train`` builds, for classifier-free guidance);
    ``None`` when it has one per class (the usual layout of conditional DDPMs: no guidance), when it is
    unconditional, or when the classes are unknown (a model imported without ``--data``)."""
    embeds = unet_config.get("num_class_embeds")
    return embeds - 1 if embeds is not None and num_classes > 0 and embeds == num_classes + 1 else None


def unet_class(unet_config: dict[str, Any]) -> type:
    """``UNet2DConditionModel`` for a text-conditional config (it has ``cross_attention_dim``), else ``UNet2DModel``."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    return UNet2DConditionModel if "cross_attention_dim" in unet_config else UNet2DModel


def build_unet(unet_config: dict[str, Any]) -> "torch.nn.Module":
    """``from_config`` of the config's UNet class with a one-line error for a config diffusers cannot build."""
    try:
        with quiet_diffusers():
            return unet_class(unet_config).from_config(unet_config)
    except Exception as exc:  # diffusers raises many types for bad configs
        raise BadInputError(f"UNet config cannot be built by diffusers: {cause_of(exc)}") from None


@contextmanager
def quiet_diffusers():
    """Hold back diffusers' and transformers' config warnings and loading bars: the CLI's stderr is one line per error."""
    import logging

    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    bars = _loading_bars(False)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        _loading_bars(bars)


def _loading_bars(enabled: bool) -> bool:
    """Turn diffusers' and transformers' loading progress bars on or off; returns whether they were on."""
    from diffusers.utils import logging as diffusers_logging

    modules = [diffusers_logging]
    try:
        from transformers.utils import logging as transformers_logging

        modules.append(transformers_logging)
    except ImportError:
        pass
    was = diffusers_logging.is_progress_bar_enabled()
    for module in modules:
        (module.enable_progress_bar if enabled else module.disable_progress_bar)()
    return was


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
    """sha256 over the canonical JSON of configs, data, lineage (which holds the weights hash) and, for
    text-to-image models, the frozen components' records (which hold their hashes)."""
    record = {"unet_config": checkpoint.unet_config, "scheduler_config": checkpoint.scheduler_config,
              "data": checkpoint.data, "lineage": checkpoint.lineage}
    if checkpoint.components:  # absent for pixel models, whose records stay as they always were
        record["components"] = checkpoint.components
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
