"""Import from and export to diffusers ``save_pretrained`` folders (safetensors only)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from unlearnctl.checkpoint.model import Checkpoint, default_scheduler, lineage_entry, plain_config, quiet_diffusers
from unlearnctl.errors import BadInputError, cause_of, require

def export_diffusers(checkpoint: Checkpoint, directory: str | Path) -> Path:
    """Write a diffusers ``save_pretrained`` folder (``unet/``, ``scheduler/``, ``model_index.json``, and for
    text-to-image models ``vae/``, ``text_encoder/``, ``tokenizer/``).

    Text-to-image models load with ``StableDiffusionPipeline.from_pretrained(directory)``; pixel models with
    ``DDPMPipeline.from_pretrained`` (unconditional) or ``UNet2DModel.from_pretrained(directory,
    subfolder="unet")``. ``unlearnctl.json`` keeps the data description and lineage. The folder appears whole
    or not at all.
    """

    directory = Path(directory)
    require(not directory.exists() or (directory.is_dir() and not any(directory.iterdir())),
            f"export folder {directory} exists and is not empty; choose a new folder")
    parent = directory.parent if str(directory.parent) else Path(".")
    require(parent.is_dir() and os.access(parent, os.W_OK), f"folder {parent} does not exist or is not writable")
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{directory.name}."))
    try:
        with quiet_diffusers():
            _pipeline(checkpoint).save_pretrained(staging, safe_serialization=True)
        sidecar = {"data": checkpoint.data, "lineage": checkpoint.lineage, "source_sha256": checkpoint.sha256}
        (staging / "unlearnctl.json").write_text(json.dumps(sidecar, indent=2))
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _pipeline(checkpoint: Checkpoint) -> Any:
    """The diffusers pipeline object of a checkpoint (built on the CPU, fp32 UNet)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    if not checkpoint.text_conditional:
        return DDPMPipeline(unet=checkpoint.build_unet(), scheduler=DDPMScheduler.from_config(checkpoint.scheduler_config))
    from diffusers import StableDiffusionPipeline

    from unlearnctl.checkpoint.components import build_component, build_scheduler, load_tokenizer

    components, frozen = checkpoint.components, checkpoint.frozen
    return StableDiffusionPipeline(
        vae=build_component(components, frozen, "vae"), text_encoder=build_component(components, frozen, "text_encoder"),
        tokenizer=load_tokenizer(frozen), unet=checkpoint.build_unet(), scheduler=build_scheduler(components),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


SUPPORTED_SOURCES = ("StableDiffusionPipeline folders, pixel pipelines whose unet is a UNet2DModel "
                     "(DDPMPipeline, DDIMPipeline) and bare UNet2DModel folders")


def import_diffusers(directory: str | Path, data: dict[str, Any], source: str | None = None) -> Checkpoint:
    """Read a diffusers folder, safetensors only: a ``StableDiffusionPipeline`` (text-to-image), a pixel pipeline
    with ``unet/`` or a bare ``UNet2DModel`` folder. Other pipeline classes are refused naming what is supported."""
    from diffusers import DDPMScheduler, UNet2DModel

    directory = Path(directory)
    require(directory.is_dir(), f"diffusers folder {directory} does not exist")
    pipeline_class = _pipeline_class(directory)
    if pipeline_class == "StableDiffusionPipeline":
        return import_stable_diffusion(directory, data, source)
    unet_dir = directory / "unet" if (directory / "unet").is_dir() else directory
    require((unet_dir / "config.json").is_file(), f"{unet_dir} has no config.json; is it a diffusers save_pretrained folder?")
    unet_class = _read_json(unet_dir / "config.json").get("_class_name", "UNet2DModel")
    require(unet_class == "UNet2DModel", f"{directory} holds a {pipeline_class or unet_class}, which unlearnctl does not "
            f"import; supported: {SUPPORTED_SOURCES}")
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(f"{path} is not readable JSON ({cause_of(exc)})") from None
    require(isinstance(value, dict), f"{path} is not a JSON object")
    return value


def _pipeline_class(directory: Path) -> str | None:
    index = directory / "model_index.json"
    if not index.is_file():
        return None
    name = _read_json(index).get("_class_name")
    require(isinstance(name, str), f"{index} names no pipeline class (_class_name)")
    return name


SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def import_stable_diffusion(directory: Path, data: dict[str, Any], source: str | None = None) -> Checkpoint:
    """A ``StableDiffusionPipeline`` folder: the UNet becomes the trainable weights, the VAE, text encoder,
    tokenizer and scheduler the embedded frozen components (:mod:`unlearnctl.checkpoint.components`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from unlearnctl.checkpoint.components import SCHEDULER_CLASSES, tokenizer_complete

    missing = [name for name in SD_COMPONENTS if not (directory / name).is_dir()]
    require(not missing, f"{directory} lacks the pipeline component{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    for name in ("unet", "vae", "text_encoder"):
        folder = directory / name
        pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
        require(any(folder.glob("*.safetensors")), f"{folder} has no .safetensors weights"
                + (f" (only {pickles[0]}); pickle weights are refused because loading them can run code" if pickles else ""))
    tokenizer_dir = directory / "tokenizer"
    require(tokenizer_complete({p.name for p in tokenizer_dir.iterdir()}),
            f"{tokenizer_dir} has no tokenizer files; a CLIPTokenizer needs tokenizer.json or vocab.json with merges.txt")
    scheduler_config = _read_json(directory / "scheduler" / "scheduler_config.json") \
        if (directory / "scheduler" / "scheduler_config.json").is_file() else {}
    scheduler_class = scheduler_config.get("_class_name")
    require(scheduler_class in SCHEDULER_CLASSES, f"{directory / 'scheduler'} holds scheduler {str(scheduler_class)[:40]}; "
            f"supported: {', '.join(SCHEDULER_CLASSES)}")

    def load(name: str, loader: Any, **kwargs: Any) -> Any:
        try:
            with quiet_diffusers():
                return loader(directory / name, local_files_only=True, **kwargs)
        except Exception as exc:  # diffusers/transformers raise many types for bad folders
            raise BadInputError(f"could not load {directory / name}: {cause_of(exc)}") from None

    unet = load("unet", UNet2DConditionModel.from_pretrained, use_safetensors=True)
    vae = load("vae", AutoencoderKL.from_pretrained, use_safetensors=True)
    text_encoder = load("text_encoder", CLIPTextModel.from_pretrained, use_safetensors=True)
    tokenizer = load("tokenizer", CLIPTokenizer.from_pretrained)
    import diffusers

    scheduler = getattr(diffusers, scheduler_class).from_config(scheduler_config)
    return stable_diffusion_checkpoint(unet, vae, text_encoder, tokenizer, scheduler, data,
                                       lineage_entry("import", {"source": str(source or directory)}, seed=None, wall_time_s=0.0))


def stable_diffusion_checkpoint(unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
                                data: dict[str, Any], entry: dict[str, Any]) -> Checkpoint:
    """A text-to-image checkpoint from pipeline components, after checking they fit together."""
    from unlearnctl.checkpoint.components import pack_components
    from unlearnctl.diffusion import check_prediction_type

    latent = vae.config.latent_channels
    require(unet.config.in_channels == latent and unet.config.out_channels == latent,
            f"the UNet takes {unet.config.in_channels} latent channels, the VAE makes {latent}; they are not one pipeline")
    width = text_encoder.config.hidden_size
    require(unet.config.cross_attention_dim == width,
            f"the UNet's cross-attention expects {unet.config.cross_attention_dim}-wide text, the text encoder gives {width}")
    check_prediction_type(scheduler.config.get("prediction_type", "epsilon"))
    components, frozen = pack_components(vae, text_encoder, tokenizer, scheduler)
    training = {**plain_config(default_scheduler().config), **{k: v for k, v in components["scheduler"]["config"].items()
                                                               if k in TRAINING_SCHEDULE_KEYS}}
    training["clip_sample"] = False  # latents are not bounded to [-1, 1]
    return Checkpoint(
        state_dict={k: v.detach().clone() for k, v in unet.state_dict().items()},
        unet_config=plain_config(unet.config), scheduler_config=training, data=data, lineage=[entry],
        components=components, frozen=frozen,
    )


# The keys of a pipeline scheduler's config that define the training noise schedule (the rest is sampler detail).
TRAINING_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                          "prediction_type", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr")


def import_single_file(path: str | Path, config_dir: str | Path, data: dict[str, Any], source: str | None = None) -> Checkpoint:
    """A single-file Stable Diffusion checkpoint (the original CompVis layout, ``.safetensors`` only) read
    through diffusers' single-file loader, offline: ``config_dir`` is a ``StableDiffusionPipeline`` folder whose
    component configs, tokenizer and scheduler describe the file's weights (the weights in it are not used)."""
    from diffusers import StableDiffusionPipeline

    from unlearnctl.checkpoint.validation import PICKLE_SUFFIXES, read_header

    path, config_dir = Path(path), Path(config_dir)
    require(path.is_file(), f"single-file checkpoint {path} does not exist")
    require(path.suffix.lower() not in PICKLE_SUFFIXES,
            f"{path} is a pickle checkpoint ({path.suffix}); loading it could run code, so it is refused — use its .safetensors version")
    require(path.suffix.lower() == ".safetensors", f"{path} is not a .safetensors file; single-file checkpoints are read from .safetensors only")
    read_header(path)  # a valid safetensors file before diffusers opens it
    require(config_dir.is_dir(), f"--config {config_dir} is not a folder; give the diffusers StableDiffusionPipeline folder "
            "whose configs describe the file (nothing is downloaded)")
    pipeline_class = _pipeline_class(config_dir)
    require(pipeline_class == "StableDiffusionPipeline", f"--config {config_dir} holds a {pipeline_class or 'folder without model_index.json'}; "
            "single-file import supports StableDiffusionPipeline configs")
    missing = [name for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (config_dir / name).is_dir()]
    require(not missing, f"--config {config_dir} lacks the pipeline component{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    try:
        with quiet_diffusers():
            pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config_dir), local_files_only=True,
                                                            safety_checker=None, requires_safety_checker=False)
    except Exception as exc:  # diffusers raises many types for files that do not fit the configs
        raise BadInputError(f"diffusers could not read {path} with the configs of {config_dir}: {cause_of(exc)}") from None
    entry = lineage_entry("import", {"source": str(source or path), "config": str(config_dir)}, seed=None, wall_time_s=0.0)
    return stable_diffusion_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, data, entry)
