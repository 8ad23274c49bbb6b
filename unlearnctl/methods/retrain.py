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
    from unlearnctl.unlearning import RunRecord, UnlearnJob


@dataclass
class RetrainConfig(MethodConfig):
    """No parameters of its own: the recipe comes from the base checkpoint's lineage."""


def training_recipe(checkpoint: "Checkpoint") -> dict[str, Any]:
    """The params of the first ``train`` lineage entry (pixel: preset, conditional, unet_overrides, train config;
    text-to-image: text_to_image, autoencoder steps, unet_overrides, train config)."""
    keys = ("text_to_image", "autoencoder", "train") if checkpoint.text_conditional else ("preset", "conditional", "train")
    for entry in checkpoint.lineage:
        if entry.get("command") == "train":
            params = entry.get("params") or {}
            require(all(key in params for key in keys),
                    f"the base checkpoint's train entry lacks its recipe ({', '.join(keys)}); cannot retrain")
            return params
    raise_no_recipe(checkpoint)


def raise_no_recipe(checkpoint: "Checkpoint") -> None:
    from unlearnctl.errors import BadInputError

    commands = ", ".join(e.get("command", "?") for e in checkpoint.lineage) or "none"
    raise BadInputError(f"the base checkpoint records no training recipe (lineage: {commands}); "
                        "retrain needs a model trained by `unlearnctl train` (exact retraining of an imported model "
                        "needs its original training run: its data, code and compute)")


@register_method("retrain")
class Retrain(Method):
    """Exact unlearning: a new model trained on D_r only, with the base's recipe."""

    Config = RetrainConfig
    summary = "exact unlearning: train from scratch on the retain set with the base's recorded recipe (gold standard)"
    defaults = {"steps": None, "lr": None, "batch_size": None, "lr_schedule": None, "ema_decay": None}  # None: the recipe's
    exact = True

    order = 80
    scenarios = ("class", "canary", "concept")

    @classmethod
    def check_model(cls, checkpoint: "Checkpoint") -> None:
        training_recipe(checkpoint)  # refuses an imported model before any data is read

    def run(self, job: "UnlearnJob") -> tuple[dict[str, Any], "RunRecord"]:
        """Train from scratch on the retain set; returns the weights and the run record (recipe, overrides).

        ``job.resume`` (:class:`~unlearnctl.resume.ResumeOptions`) checkpoints and resumes the training run.
        """
        import time

        from unlearnctl.training import TrainConfig, train_model
        from unlearnctl.unlearning import RunRecord

        checkpoint, config, forget_set = job.checkpoint, job.config, job.forget_set
        require(config.lr_schedule is None and config.ema_decay is None,
                "retrain repeats the base's recipe with its own schedule and EMA; --lr-schedule and --ema-decay are for fine-tuning methods")
        recipe = training_recipe(checkpoint)
        overrides = {k: v for k, v in {"steps": config.steps, "lr": config.lr, "batch_size": config.batch_size}.items() if v is not None}
        train = TrainConfig(**{**recipe["train"], **overrides, "seed": config.seed})
        if checkpoint.text_conditional:
            return self._run_text_to_image(job, recipe, train, overrides)
        require(checkpoint.conditional == bool(recipe["conditional"]),
                "the base checkpoint's recipe does not match its model (conditional flag); cannot retrain")
        started = time.perf_counter()
        model = train_model(job.split, conditional=bool(recipe["conditional"]), preset=recipe["preset"],
                            unet_overrides=recipe.get("unet_overrides") or None, config=train,
                            exclude=forget_set.spec, device=config.device, progress=job.progress, command="retrain",
                            resume=job.resume, precision=config.precision,
                            prediction_type=recipe.get("prediction_type", "epsilon"))
        require(model.unet_config == checkpoint.unet_config,
                "retraining with the recorded recipe built a different UNet config than the base's; cannot compare them")
        params = {"recipe": {k: recipe[k] for k in ("preset", "conditional", "unet_overrides") if k in recipe},
                  "train": train.to_dict(), "overrides": overrides,
                  "num_train_images": model.lineage[-1]["params"]["num_train_images"], "from_scratch": True,
                  "precision": config.precision, "data": job.split.description["source"]}
        record = RunRecord(job, command="retrain", params=params, steps=train.steps, lr=train.lr, batch_size=train.batch_size,
                           data_fingerprint=forget_set.retain.fingerprint, steps_run=train.steps,
                           wall_time_s=time.perf_counter() - started, extra={"train": train.to_dict()})
        return model.state_dict, record

    def _run_text_to_image(self, job: "UnlearnJob", recipe: dict[str, Any], train: Any,
                           overrides: dict[str, Any]) -> tuple[dict[str, Any], "RunRecord"]:
        """Repeat ``train --text-to-image`` without the forget set: the autoencoder, the tokenizer, the text encoder
        and the UNet all anew (the base's autoencoder saw the forgotten images too), from the recorded data."""
        import time

        from unlearnctl.data import load_recorded_data
        from unlearnctl.text_to_image import caption_seed, train_text_to_image
        from unlearnctl.unlearning import RunRecord

        checkpoint, config, forget_set = job.checkpoint, job.config, job.forget_set
        require(not forget_set.spec.images, "retrain cannot leave out --forget-images: they were never training images")
        require(checkpoint.data.get("fingerprint") == job.split.description.get("fingerprint"),
                "retrain repeats the base's training on its recorded data; drop --data")
        started = time.perf_counter()
        model = train_text_to_image(load_recorded_data(checkpoint.data), config=train,
                                    autoencoder_steps=recipe["autoencoder"]["steps"],
                                    unet_overrides=recipe.get("unet_overrides") or None, exclude=forget_set.spec,
                                    device=config.device, progress=job.progress, precision=config.precision,
                                    prediction_type=recipe.get("prediction_type", "epsilon"),
                                    gradient_checkpointing=bool(recipe.get("gradient_checkpointing")),
                                    command="retrain", caption_seed=caption_seed(checkpoint))
        require(model.unet_config == checkpoint.unet_config,
                "retraining with the recorded recipe built a different UNet config than the base's; cannot compare them")
        params = {"recipe": {"text_to_image": True, "autoencoder_steps": recipe["autoencoder"]["steps"],
                             "unet_overrides": recipe.get("unet_overrides") or {}},
                  "train": train.to_dict(), "overrides": overrides, "from_scratch": True, "precision": config.precision,
                  "num_train_images": model.lineage[-1]["params"]["num_train_images"], "data": job.split.description["source"]}
        record = RunRecord(job, command="retrain", params=params, steps=train.steps, lr=train.lr, batch_size=train.batch_size,
                           data_fingerprint=forget_set.retain.fingerprint, steps_run=train.steps,
                           wall_time_s=time.perf_counter() - started, extra={"train": train.to_dict()},
                           changed={"components": model.components, "frozen": model.frozen})
        return model.state_dict, record

