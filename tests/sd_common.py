"""Tiny Stable Diffusion pipelines built from configs (random weights, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE (GPT-2, CLIP) uses for bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def byte_level_tokenizer(folder: Path, max_length: int = 16):
    """A ``CLIPTokenizer`` whose vocabulary is CLIP's 256 byte symbols (each alone and word-final) and no merges."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    vocab = {token: i for i, token in enumerate([*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length, local_files_only=True)


def tiny_sd_pipeline(tmp: Path, *, seed: int = 0, scheduler: str = "PNDMScheduler", prediction_type: str = "epsilon",
                     image_size: int = 16, channels: int = 3):
    """A random ``StableDiffusionPipeline``: 2-level UNet2DConditionModel on 4×(size/2)² latents, 2-level VAE,
    2-layer CLIP text encoder, byte-level tokenizer."""
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer(tmp / "tokenizer-src")
    unet = UNet2DConditionModel(
        sample_size=image_size // 2, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=channels, out_channels=channels, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        sample_size=image_size,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    sampler = getattr(diffusers, scheduler)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            prediction_type=prediction_type, steps_offset=1, **({"skip_prk_steps": True} if scheduler == "PNDMScheduler" else {}),
                                            **({"clip_sample": False, "set_alpha_to_one": False} if scheduler == "DDIMScheduler" else {}))
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sampler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_tiny_sd(tmp: Path, name: str = "sd", **kwargs) -> Path:
    folder = tmp / name
    tiny_sd_pipeline(tmp, **kwargs).save_pretrained(folder, safe_serialization=True)
    return folder
