"""Exact unlearning — retrain from scratch on the retain set with the base model's recorded recipe.

The gold standard every report compares against: a model that never saw the forget set. The recipe
(model size preset, conditional or not, UNet overrides, the full :class:`~unlearnctl.training.TrainConfig`)
is read from the first ``train`` entry of the base checkpoint's lineage; ``--steps``, ``--lr`` and
``--batch-size`` override it when given, and the overrides are recorded. The output is not derived from
the base weights, but its lineage entry names the base (``parent_sha256``) so reports know which model it
replaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unlearnctl.errors import require
from unlearnctl.methods import register_method
from unlearnctl.methods.base import Method, MethodConfig

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import DataSplit, ForgetSet
    from unlearnctl.progress import ProgressFn


@dataclass
class RetrainConfig(MethodConfig):
    """No parameters of its own: the recipe comes from the base checkpoint's lineage."""


def training_recipe(checkpoint: "Checkpoint") -> dict[str, Any]:
    """The params of the first ``train`` lineage entry (preset, conditional, unet_overrides, train config)."""
    for entry in checkpoint.lineage:
        if entry.get("command") == "train":
            params = entry.get("params") or {}
            require(all(key in params for key in ("preset", "conditional", "train")),
                    "the base checkpoint's train entry lacks its recipe (preset, conditional, train); cannot retrain")
            return params
    raise_no_recipe(checkpoint)


def raise_no_recipe(checkpoint: "Checkpoint") -> None:
    from unlearnctl.errors import BadInputError

    commands = ", ".join(e.get("command", "?") for e in checkpoint.lineage) or "none"
    raise BadInputError(f"the base checkpoint records no training recipe (lineage: {commands}); "
                        "retrain needs a model trained by `unlearnctl train`")


@register_method("retrain")
class Retrain(Method):
    """Exact unlearning: a new model trained on D_r only, with the base's recipe."""

    Config = RetrainConfig
    summary = "exact unlearning: train from scratch on the retain set with the base's recorded recipe (gold standard)"
    defaults = {"steps": None, "lr": None, "batch_size": None, "lr_schedule": None, "ema_decay": None}  # None: the recipe's
    exact = True

    @staticmethod
    def run(checkpoint: "Checkpoint", split: "DataSplit", forget_set: "ForgetSet", *, steps: int | None,
            lr: float | None, batch_size: int | None, seed: int, device: str,
            progress: "ProgressFn" = None, resume: Any = None, precision: str = "fp32") -> tuple[dict[str, Any], dict[str, Any]]:
        """Train from scratch; returns ``(weights, params)`` where params records the recipe and overrides.

        ``resume`` (:class:`~unlearnctl.resume.ResumeOptions`) checkpoints and resumes the training run.
        """
        from unlearnctl.training import TrainConfig, train_model

        recipe = training_recipe(checkpoint)
        overrides = {k: v for k, v in {"steps": steps, "lr": lr, "batch_size": batch_size}.items() if v is not None}
        train = {**recipe["train"], **overrides, "seed": seed}
        config = TrainConfig(**train)
        require(checkpoint.conditional == bool(recipe["conditional"]),
                "the base checkpoint's recipe does not match its model (conditional flag); cannot retrain")
        model = train_model(split, conditional=bool(recipe["conditional"]), preset=recipe["preset"],
                            unet_overrides=recipe.get("unet_overrides") or None, config=config,
                            exclude=forget_set.spec, device=device, progress=progress, command="retrain", resume=resume,
                            precision=precision)
        require(model.unet_config == checkpoint.unet_config,
                "retraining with the recorded recipe built a different UNet config than the base's; cannot compare them")
        params = {"recipe": {k: recipe[k] for k in ("preset", "conditional", "unet_overrides") if k in recipe},
                  "train": config.to_dict(), "overrides": overrides,
                  "num_train_images": model.lineage[-1]["params"]["num_train_images"], "from_scratch": True,
                  "precision": precision}
        return model.state_dict, params
