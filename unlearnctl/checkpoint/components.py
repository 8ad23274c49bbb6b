"""The frozen components of a text-to-image checkpoint: VAE, text encoder, tokenizer and the pipeline's sampler.

A Stable Diffusion pipeline is a ``UNet2DConditionModel`` (trained by every method) plus an
``AutoencoderKL``, a ``CLIPTextModel`` with its ``CLIPTokenizer`` and a scheduler (frozen). The checkpoint
embeds the frozen parts in the same safetensors file (docs/format.md says why): tensors named
``vae/<key>``, ``text_encoder/<key>`` and ``tokenizer/<file name>`` (the tokenizer's files as bytes), and
one ``components`` metadata record::

    {"vae": {"class": "AutoencoderKL", "config": {...}, "sha256": "..."},
     "text_encoder": {"class": "CLIPTextModel", "config": {...}, "sha256": "..."},
     "tokenizer": {"class": "CLIPTokenizer", "files": ["merges.txt", ...], "sha256": "..."},
     "scheduler": {"class": "PNDMScheduler", "config": {...}}}

Each ``sha256`` is :func:`~unlearnctl.checkpoint.model.weights_sha256` of that component's tensors, and the
record is inside the metadata integrity hash, so ``inspect --verify`` notices a component changed outside
the tool. Nothing here runs code from a file: configs are bounded before anything is built, tokenizers are
read from their JSON/text files, and scheduler classes come from a fixed list of diffusers schedulers.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from unlearnctl.checkpoint.model import plain_config, quiet_diffusers, weights_sha256
from unlearnctl.errors import BadInputError, cause_of, require

MODULE_COMPONENTS = {"vae": "AutoencoderKL", "text_encoder": "CLIPTextModel"}
TOKENIZER_CLASS = "CLIPTokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
# The pipeline samplers a checkpoint may name (diffusers classes, looked up by name from this list only).
SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                     "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler",
                     "UniPCMultistepScheduler", "HeunDiscreteScheduler")
# Sanity bounds on component configs read from an untrusted file, checked before anything is built.
CONFIG_BOUNDS = {
    "vae": {"in_channels": (1, 64), "out_channels": (1, 64), "latent_channels": (1, 64), "layers_per_block": (1, 32),
            "norm_num_groups": (1, 1024), "sample_size": (1, 8192)},
    "text_encoder": {"vocab_size": (1, 1_000_000), "hidden_size": (1, 16384), "intermediate_size": (1, 65536),
                     "num_hidden_layers": (1, 128), "num_attention_heads": (1, 1024),
                     "max_position_embeddings": (1, 65536), "projection_dim": (1, 16384)},
}


def latent_scale(components: dict[str, Any]) -> int:
    """Image pixels per latent pixel: the VAE halves the size once per block after the first."""
    return 2 ** (len(components["vae"]["config"]["block_out_channels"]) - 1)


def scaling_factor(components: dict[str, Any]) -> float:
    """The VAE's latent scaling (``latents = vae.encode(x).latent_dist.mean × scaling_factor``)."""
    return float(components["vae"]["config"].get("scaling_factor", 0.18215))


def pack_components(vae: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer: Any,
                    scheduler: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``components`` record and the ``frozen`` tensors of a pipeline's frozen parts."""
    record: dict[str, Any] = {}
    frozen: dict[str, torch.Tensor] = {}
    for name, module in (("vae", vae), ("text_encoder", text_encoder)):
        tensors = {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}
        config = plain_config(module.config) if name == "vae" else _text_config(module.config)
        record[name] = {"class": MODULE_COMPONENTS[name], "config": config, "sha256": weights_sha256(tensors)}
        frozen.update({f"{name}/{k}": v for k, v in tensors.items()})
    files = tokenizer_files(tokenizer)
    record["tokenizer"] = {"class": TOKENIZER_CLASS, "files": sorted(files), "sha256": weights_sha256(files)}
    frozen.update({f"tokenizer/{k}": v for k, v in files.items()})
    scheduler_class = type(scheduler).__name__
    require(scheduler_class in SCHEDULER_CLASSES,
            f"the pipeline's scheduler {scheduler_class} is not supported; supported: {', '.join(SCHEDULER_CLASSES)}")
    record["scheduler"] = {"class": scheduler_class, "config": plain_config(scheduler.config)}
    return record, frozen


def _text_config(config: Any) -> dict[str, Any]:
    """A transformers config as the JSON-able dict that rebuilds it (no transient fields)."""
    data = config.to_dict()
    for key in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype", "_commit_hash",
                "_attn_implementation_autoset", "output_hidden_states"):
        data.pop(key, None)
    return json.loads(json.dumps(data, default=str))


def tokenizer_files(tokenizer: Any) -> dict[str, torch.Tensor]:
    """A ``CLIPTokenizer``'s files (``save_pretrained``) as uint8 tensors, by file name."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return {path.name: torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).clone()
                for path in sorted(Path(folder).iterdir()) if path.name in TOKENIZER_FILES}


def tokenizer_complete(names: set[str]) -> bool:
    """A CLIP tokenizer folder: ``tokenizer.json`` (transformers ≥ 5 writes only that) or ``vocab.json`` + ``merges.txt``."""
    return "tokenizer.json" in names or {"vocab.json", "merges.txt"} <= names


def component_tensors(frozen: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}/"
    return {key[len(prefix):]: value for key, value in frozen.items() if key.startswith(prefix)}


def build_component(components: dict[str, Any], frozen: dict[str, torch.Tensor], name: str,
                    device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The VAE or the text encoder, weights loaded, frozen (``requires_grad`` off) and in eval mode."""
    module = empty_component(name, components[name]["config"])
    module.load_state_dict(component_tensors(frozen, name))
    module.requires_grad_(False).eval()
    module = module.to(device)
    return module if dtype in (None, torch.float32) else module.to(dtype)


def empty_component(name: str, config: dict[str, Any]) -> torch.nn.Module:
    """A randomly initialised VAE or text encoder from its config (one-line error for a config that cannot be built)."""
    try:
        with quiet_diffusers():
            if name == "vae":
                from diffusers import AutoencoderKL

                return AutoencoderKL.from_config(config)
            from transformers import CLIPTextConfig, CLIPTextModel

            return CLIPTextModel(CLIPTextConfig(**config))
    except Exception as exc:  # both libraries raise many types for bad configs
        raise BadInputError(f"{name} config cannot be built: {cause_of(exc)}") from None


def load_tokenizer(frozen: dict[str, torch.Tensor]) -> Any:
    """The ``CLIPTokenizer`` from its embedded files (written to a temporary folder and read as text/JSON)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        for name, data in component_tensors(frozen, "tokenizer").items():
            require(name in TOKENIZER_FILES, f"unexpected tokenizer file {name[:60]!r}")
            (Path(folder) / name).write_bytes(data.numpy().tobytes())
        try:
            return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise BadInputError(f"the tokenizer cannot be loaded: {cause_of(exc)}") from None


def build_scheduler(components: dict[str, Any]) -> Any:
    """The pipeline's own sampler (its class from :data:`SCHEDULER_CLASSES` only)."""
    import diffusers

    record = components["scheduler"]
    require(record.get("class") in SCHEDULER_CLASSES, f"unsupported scheduler {str(record.get('class'))[:40]!r}")
    with quiet_diffusers():
        return getattr(diffusers, record["class"]).from_config(record["config"])


def check_components(origin: Any, components: Any, shapes: dict[str, list[int]]) -> None:
    """What an untrusted file's ``components`` record and tensors must satisfy (before any tensor is read)."""
    bad = f"{origin} has corrupt metadata 'components' (%s)"
    require(isinstance(components, dict), bad % "not an object")
    missing = [name for name in (*MODULE_COMPONENTS, "tokenizer", "scheduler") if name not in components]
    require(not missing, bad % f"missing {', '.join(missing)}")
    for name, cls in MODULE_COMPONENTS.items():
        record = components[name]
        require(isinstance(record, dict) and record.get("class") == cls and isinstance(record.get("config"), dict),
                bad % f"{name} must be a {cls} with a config")
        for key, (low, high) in CONFIG_BOUNDS[name].items():
            value = record["config"].get(key)
            require(value is None or (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high),
                    bad % f"{name} {key}")
        widths = record["config"].get("block_out_channels", [1])
        require(isinstance(widths, list) and 1 <= len(widths) <= 8 and all(isinstance(w, int) and 1 <= w <= 16384 for w in widths),
                bad % f"{name} block_out_channels")
        _check_shapes(origin, name, _expected_component_shapes(name, json.dumps(record["config"], sort_keys=True)), shapes)
    tokenizer = components["tokenizer"]
    require(isinstance(tokenizer, dict) and tokenizer.get("class") == TOKENIZER_CLASS, bad % f"tokenizer must be a {TOKENIZER_CLASS}")
    found = {key.split("/", 1)[1] for key in shapes if key.startswith("tokenizer/")}
    require(found <= set(TOKENIZER_FILES) and tokenizer_complete(found), bad % "tokenizer files")
    scheduler = components["scheduler"]
    require(isinstance(scheduler, dict) and scheduler.get("class") in SCHEDULER_CLASSES and isinstance(scheduler.get("config"), dict),
            bad % f"scheduler must be one of {', '.join(SCHEDULER_CLASSES)}")


@functools.lru_cache(maxsize=16)
def _expected_component_shapes(name: str, config_json: str) -> dict[str, list[int]]:
    with torch.device("meta"):
        return {key: list(t.shape) for key, t in empty_component(name, json.loads(config_json)).state_dict().items()}


def _check_shapes(origin: Any, name: str, expected: dict[str, list[int]], shapes: dict[str, list[int]]) -> None:
    found = {key.split("/", 1)[1]: shape for key, shape in shapes.items() if key.startswith(f"{name}/")}
    missing, unexpected = expected.keys() - found.keys(), found.keys() - expected.keys()
    require(not missing and not unexpected,
            f"{origin} {name} weights do not match its config ({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    wrong = [key for key in expected if expected[key] != found[key]]
    require(not wrong, f"{origin} {name} weights do not match its config (shape of {wrong[0] if wrong else ''})")


def verify_components(components: dict[str, Any], frozen: dict[str, torch.Tensor]) -> list[str]:
    """Problems with the embedded components: a tensor set whose hash differs from its record."""
    problems = []
    for name in (*MODULE_COMPONENTS, "tokenizer"):
        recorded = components.get(name, {}).get("sha256")
        if recorded != weights_sha256(component_tensors(frozen, name)):
            problems.append(f"{name} weights changed outside unlearnctl (sha256 differs from the recorded one)")
    return problems
