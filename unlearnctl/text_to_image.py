"""Training a latent text-to-image model from scratch: the embedded default (``train --text-to-image``).

Offline and small enough for two CPU cores, built the way Stable Diffusion is: a KL autoencoder
(:mod:`unlearnctl.autoencoder`) trained on the images first, a CLIP tokenizer written for the captions' words
and a tiny CLIP text encoder (:mod:`unlearnctl.textenc`, both frozen), then a ``UNet2DConditionModel`` trained
with the denoising loss on the VAE latents, conditioned on the captions' embeddings (10% replaced by the empty
prompt's, for classifier-free guidance). Data without captions (the digits) get generated ones
(:mod:`unlearnctl.captions`). The result is an ordinary text-to-image checkpoint: the same code samples,
exports and unlearns it as an imported ``StableDiffusionPipeline``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from unlearnctl.errors import require
from unlearnctl.progress import ProgressFn

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import DataSplit, ForgetSpec
    from unlearnctl.training import TrainConfig

# The UNet of the embedded default: two levels on the latents, cross-attention on the finer one and in the middle.
TEXT_UNET = {"block_out_channels": [32, 64], "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 8,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
AUTOENCODER_STEPS = 600  # about a minute on 2 cores for the digits (bench/autoencoder.py)
TEXT_TO_IMAGE_BATCH_SIZE = 64  # `train --text-to-image`'s default: 3,000 steps of 64 train in under 10 min on 2 cores


def text_unet_config(latent_size: int, latent_channels: int, cross_attention_dim: int,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config of the embedded default for latents of the given size and channels."""
    return {**TEXT_UNET, "sample_size": latent_size, "in_channels": latent_channels, "out_channels": latent_channels,
            "cross_attention_dim": cross_attention_dim, **(overrides or {})}


def training_captions(data: "DataSplit", seed: int) -> tuple[list[str], bool]:
    """The training images' captions, and whether they were generated (digits and other captionless labelled data)."""
    from unlearnctl.captions import digit_captions

    train = data.train
    if train.captions is not None:
        return list(train.captions), False
    require(train.labels is not None, "text-to-image training needs captions (metadata.jsonl, .txt files or npz "
            "'captions') or class labels to caption the images from")
    return digit_captions(train.labels.tolist(), data.description["class_names"], seed), True


def caption_seed(checkpoint: "Checkpoint") -> int:
    """The seed the model's generated captions were drawn with: its first from-scratch run's (``train``; a
    ``retrain`` keeps its base's captions), 0 for an imported model or none recorded."""
    from unlearnctl.provenance import ROOT_COMMANDS

    roots = [e for e in checkpoint.lineage if isinstance(e, dict) and e.get("command") in ROOT_COMMANDS]
    seed = roots[0].get("seed") if roots else None
    return int(seed) if isinstance(seed, int) else 0


def captioned_split(split: "DataSplit", seed: int) -> "DataSplit":
    """``split`` with a caption on every train and held-out image: stored captions, else the generated ones
    (:func:`training_captions` for the train split, the same draw for held-out images)."""
    from unlearnctl.captions import digit_captions

    train_captions, _ = training_captions(split, seed)
    heldout = split.heldout
    if heldout.captions is None and heldout.labels is not None and len(heldout):
        heldout = replace(heldout, captions=digit_captions(heldout.labels.tolist(), split.class_names, seed))
    return replace(split, train=replace(split.train, captions=train_captions), heldout=heldout)


def check_text_data(description: dict[str, Any], checkpoint: "Checkpoint") -> None:
    """Refuse (exit 2) data whose images are not the size and channels the model draws."""
    from unlearnctl.checkpoint.validation import image_shape

    resolution, channels = image_shape(checkpoint.unet_config, checkpoint.components)
    require(description["resolution"] == resolution,
            f"data resolution {description['resolution']} does not match the model's {resolution}; pass --resolution {resolution}")
    require(description["channels"] == channels,
            f"data has {description['channels']} channels, the model {channels}; pass --channels {channels}")


def train_text_to_image(
    data: "DataSplit",
    *,
    config: "TrainConfig",
    autoencoder_steps: int = AUTOENCODER_STEPS,
    unet_overrides: dict[str, Any] | None = None,
    exclude: "ForgetSpec | None" = None,
    device: str = "auto",
    progress: ProgressFn = None,
    precision: str = "fp32",
    prediction_type: str = "epsilon",
    gradient_checkpointing: bool = False,
    command: str = "train",
    caption_seed: int | None = None,
) -> "Checkpoint":
    """Train the autoencoder, write the tokenizer, build the text encoder and train the UNet (see the module doc).

    ``exclude`` trains without those images (an exact-unlearning reference); the autoencoder and the text encoder
    then never see them either. ``gradient_checkpointing`` recomputes the UNet's activations in the backward
    pass (less memory, more time; the weights it reaches are the same). ``caption_seed`` seeds generated
    captions (default: ``config.seed``; ``retrain`` keeps the base's captions). Returns an unsaved checkpoint
    whose lineage records the recipe.
    """
    from diffusers import DDIMScheduler

    from unlearnctl.autoencoder import train_autoencoder
    from unlearnctl.captions import caption_words
    from unlearnctl.checkpoint import build_unet, default_scheduler, lineage_entry, plain_config
    from unlearnctl.checkpoint.diffusers_io import stable_diffusion_checkpoint
    from unlearnctl.data import resolve_forget
    from unlearnctl.denoisers import LatentTextDenoiser
    from unlearnctl.diffusion import NoiseSchedule, check_prediction_type
    from unlearnctl.runtime import Runtime
    from unlearnctl.textenc import load_tokenizer, tiny_text_encoder_for, write_tokenizer
    from unlearnctl.training import fit_denoiser, resolve_device

    started = time.perf_counter()
    captions, generated = training_captions(data, config.seed if caption_seed is None else caption_seed)
    train_set, forget_info = data.train, None
    if exclude is not None and not exclude.empty:
        forget = resolve_forget(exclude, replace(data, train=data.train.with_captions(captions)))
        keep = (~forget.train_mask).nonzero().flatten().tolist()
        train_set, forget_info, captions = forget.retain, forget.describe(), [captions[i] for i in keep]
    runtime = Runtime.create(resolve_device(device), precision)
    fit = train_autoencoder(train_set.images, steps=autoencoder_steps, seed=config.seed, progress=progress)
    vae = fit.model.requires_grad_(False).to(runtime.device)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = load_tokenizer(write_tokenizer(folder, caption_words(data.description["class_names"]) + captions))
    text_encoder = tiny_text_encoder_for(tokenizer, seed=config.seed).requires_grad_(False).eval().to(runtime.device)
    latent_size = data.description["resolution"] // 2 ** (len(vae.config.block_out_channels) - 1)
    unet_config = text_unet_config(latent_size, vae.config.latent_channels, text_encoder.config.hidden_size, unet_overrides)
    schedule = {**plain_config(default_scheduler().config), "prediction_type": check_prediction_type(prediction_type),
                "clip_sample": False}
    torch.manual_seed(config.seed)
    unet = build_unet(unet_config).to(runtime.device)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    denoiser = LatentTextDenoiser(unet, NoiseSchedule(schedule), runtime, vae=vae, text_encoder=text_encoder,
                                  tokenizer=tokenizer, scaling_factor=float(vae.config.scaling_factor))
    embeddings = denoiser.embed(captions).cpu()
    weights = fit_denoiser(denoiser, train_set, config, progress=progress, task=command, conditions=embeddings)
    unet.load_state_dict(weights)
    sampler = DDIMScheduler.from_config({**schedule, "set_alpha_to_one": False})
    params = {"text_to_image": True, "unet_overrides": unet_overrides or {}, "train": config.to_dict(),
              "autoencoder": {"steps": autoencoder_steps, "heldout_mse": round(fit.heldout_mse, 6),
                              "heldout_mse_ci95": [round(v, 6) for v in fit.heldout_mse_ci95], "num_heldout": fit.num_heldout},
              "captions": "generated" if generated else "data", "num_train_images": len(train_set),
              "prediction_type": prediction_type, "gradient_checkpointing": gradient_checkpointing}
    entry = lineage_entry(command, params, config.seed, time.perf_counter() - started, data_fingerprint=train_set.fingerprint,
                          forget=forget_info, precision=precision)
    return stable_diffusion_checkpoint(unet.cpu(), vae.cpu(), text_encoder.cpu(), tokenizer, sampler, data.description, entry)
