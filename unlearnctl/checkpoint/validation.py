"""Validation of an untrusted ``.safetensors`` file before anything is read from it.

Pickle formats are refused; the header (sizes, dtypes, shapes, offsets), the required metadata and the
configs are checked before a single tensor is read, so a crafted file can neither run code nor exhaust memory.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import Any

import torch

from unlearnctl.checkpoint.model import build_unet, quiet_diffusers
from unlearnctl.errors import BadInputError, cause_of, require

FORMAT_NAME = "unlearnctl"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
REQUIRED_METADATA = ("format", "format_version", "unet_config", "scheduler_config", "data", "lineage")
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a header is JSON of names and shapes; 16 MiB is far beyond any UNet's
MAX_TENSORS = 100_000  # a large UNet has ~1,000 tensors
MAX_RANK = 8  # UNet weights have at most 4 dimensions
# Sanity bounds on a UNet config read from an untrusted file, checked before diffusers builds anything
# (a config asking for a billion layers would otherwise hang the loader); far beyond any real model.
UNET_INT_BOUNDS = {"in_channels": (1, 64), "out_channels": (1, 64), "layers_per_block": (1, 32),
                   "norm_num_groups": (1, 1024), "attention_head_dim": (1, 8192), "num_class_embeds": (1, 1_000_000)}
MAX_SAMPLE_SIZE, MAX_LEVELS, MAX_WIDTH = 4096, 8, 16384
PER_BLOCK_KEYS = ("attention_head_dim", "layers_per_block")  # UNet2DConditionModel: an int or one per block
MAX_TRAIN_TIMESTEPS = 100_000
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _refuse_unsafe_path(path: Path) -> None:
    require(path.exists(), f"checkpoint {path} does not exist")
    require(path.is_file(), f"checkpoint {path} is not a file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise BadInputError(
            f"{path} is a pickle checkpoint ({path.suffix}); loading it could run code, so it is refused — "
            "convert it to a diffusers folder with safetensors and use `unlearnctl import`"
        )


def read_header(path: Path) -> dict[str, Any]:
    """Parse and validate a safetensors header without reading any tensor bytes.

    Checks, in order: the file is not a pickle or zip archive, the header length fits the file and
    :data:`MAX_HEADER_BYTES`, the header is a JSON object, ``__metadata__`` maps strings to strings, and every
    tensor has a known dtype, a shape of at most :data:`MAX_RANK` non-negative ints and byte offsets whose
    size matches dtype × shape; the tensors tile the data area exactly (no gaps, no overlaps, nothing after).
    """
    size = path.stat().st_size
    require(size >= 8, f"{path} is not a safetensors file (too short)")
    with open(path, "rb") as handle:
        start = handle.read(8)
        _refuse_archive_bytes(path, start)
        (header_len,) = struct.unpack("<Q", start)
        require(header_len <= min(MAX_HEADER_BYTES, size - 8), f"{path} is not a valid safetensors file (bad header size)")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: bad JSON, or an int of 4,300+ digits
        raise BadInputError(f"{path} is not a valid safetensors file (header is not JSON)") from None
    require(isinstance(header, dict), f"{path} is not a valid safetensors file (header is not an object)")
    metadata = header.get("__metadata__", {})
    require(isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values()),
            f"{path} is not a valid safetensors file (__metadata__ must map strings to strings)")
    require(len(header) <= MAX_TENSORS + 1, f"{path} is not a plausible model file (more than {MAX_TENSORS} tensors)")
    _validate_tensor_entries(path, header, data_bytes=size - 8 - header_len)
    return header


def _refuse_archive_bytes(path: Path, start: bytes) -> None:
    """A ``torch.save`` zip or a raw pickle renamed to ``.safetensors`` is named as such (it is never opened)."""
    if start.startswith(b"PK\x03\x04") or (start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise BadInputError(f"{path} is a pickle/zip archive (torch.save format), not safetensors; loading it could run "
                            "code, so it is refused — save the weights with safetensors and use `unlearnctl import`")


def _validate_tensor_entries(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        bad = f"{path} is corrupt (tensor {name[:60]!r}: %s)"
        require(isinstance(entry, dict) and entry.keys() == {"dtype", "shape", "data_offsets"},
                bad % "entry must hold exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        require(isinstance(dtype, str) and dtype in DTYPE_BYTES, bad % f"unsupported dtype {str(dtype)[:20]}")
        require(
            isinstance(shape, list) and len(shape) <= MAX_RANK
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape),
            bad % "bad shape",
        )
        require(
            isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets),
            bad % "bad offsets",
        )
        begin, end = offsets
        numel = 1
        for dim in shape:
            numel *= dim
        require(0 <= begin <= end <= data_bytes, bad % "offsets outside the file (truncated?)")
        require(end - begin == numel * DTYPE_BYTES[dtype], bad % "byte size does not match dtype and shape")
        spans.append((begin, end))
    spans.sort()
    position = 0
    for begin, end in spans:  # the safetensors rule: the data area is tiled exactly, in order
        require(begin >= position, f"{path} is corrupt (overlapping tensors)")
        require(begin == position, f"{path} is corrupt (unindexed bytes between tensors)")
        position = end
    require(position == data_bytes, f"{path} is corrupt ({data_bytes - position} bytes after the last tensor)")


def _parse_metadata(path: Path, metadata: Any) -> dict[str, Any]:
    require(isinstance(metadata, dict), f"{path} has no unlearnctl metadata; import diffusers models with `unlearnctl import`")
    if metadata.get("format") == "unlearnctl-state":
        raise BadInputError(f"{path} is a resume state written by --checkpoint-every, not a model; pass it to --resume")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    require(not missing, f"{path} lacks metadata {', '.join(missing)}; is it an unlearnctl checkpoint?")
    require(metadata["format"] == FORMAT_NAME, f"{path} is not an unlearnctl checkpoint (format {metadata['format'][:40]!r})")
    require(
        metadata["format_version"] == str(FORMAT_VERSION),
        f"{path} has format version {metadata['format_version'][:20]!r}; this unlearnctl reads version {FORMAT_VERSION}",
    )
    parsed = {}
    for key in REQUIRED_METADATA[2:]:
        try:
            parsed[key] = json.loads(metadata[key])
        except (TypeError, ValueError, RecursionError):
            raise BadInputError(f"{path} has corrupt metadata {key!r} (not JSON)") from None
    for key in ("unet_config", "scheduler_config", "data"):
        require(isinstance(parsed[key], dict), f"{path} has corrupt metadata {key!r} (not an object)")
    require(isinstance(parsed["lineage"], list), f"{path} has corrupt metadata 'lineage' (not a list)")
    _check_unet_config(path, parsed["unet_config"])
    _check_scheduler_config(path, parsed["scheduler_config"])
    parsed["components"] = _parse_components(path, metadata)
    _check_data_description(path, parsed["data"], parsed["unet_config"], parsed["components"])
    _check_lineage_types(path, parsed["lineage"])
    integrity = metadata.get("integrity")
    parsed["integrity"] = integrity if isinstance(integrity, str) else None
    return parsed


def _parse_components(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The optional ``components`` record of a text-to-image checkpoint (``{}`` for pixel models)."""
    if "components" not in metadata:
        return {}
    try:
        components = json.loads(metadata["components"])
    except (TypeError, ValueError, RecursionError):
        raise BadInputError(f"{path} has corrupt metadata 'components' (not JSON)") from None
    require(isinstance(components, dict) and components, f"{path} has corrupt metadata 'components' (not an object)")
    return components


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_unet_config(path: Path, config: dict[str, Any]) -> None:
    """Bounds on the numbers that size a UNet, before diffusers is asked to build one from them."""
    bad = f"{path} has an implausible UNet config (%s); the file is corrupt or not from unlearnctl"
    size = config.get("sample_size")
    sizes = size if isinstance(size, list) else [size]
    require(len(sizes) in (1, 2) and all(_is_int(s) and 1 <= s <= MAX_SAMPLE_SIZE for s in sizes), bad % "sample_size")
    for key, (low, high) in UNET_INT_BOUNDS.items():
        value = config.get(key)
        if value is None and key not in ("in_channels", "out_channels"):
            continue  # optional: diffusers' default applies (num_class_embeds None = unconditional)
        values = value if key in PER_BLOCK_KEYS and isinstance(value, list) and 1 <= len(value) <= MAX_LEVELS else [value]
        require(all(_is_int(v) and low <= v <= high for v in values), bad % key)
    widths = config.get("block_out_channels")
    require(isinstance(widths, list) and 1 <= len(widths) <= MAX_LEVELS
            and all(_is_int(w) and 1 <= w <= MAX_WIDTH for w in widths), bad % "block_out_channels")
    for key in ("down_block_types", "up_block_types"):
        blocks = config.get(key)
        require(blocks is None or (isinstance(blocks, list) and len(blocks) == len(widths)
                                   and all(isinstance(b, str) for b in blocks)), bad % key)


def _check_scheduler_config(path: Path, config: dict[str, Any]) -> None:
    steps = config.get("num_train_timesteps", 1000)
    require(_is_int(steps) and 1 <= steps <= MAX_TRAIN_TIMESTEPS,
            f"{path} has an implausible scheduler config (num_train_timesteps); the file is corrupt")
    _scheduler_ok(path, json.dumps(config, sort_keys=True))
    from unlearnctl.diffusion import PREDICTION_TYPES

    kind = config.get("prediction_type", "epsilon")
    require(kind in PREDICTION_TYPES, f"{path} has prediction type {kind!r}; supported: {', '.join(PREDICTION_TYPES)}")


@functools.lru_cache(maxsize=32)
def _scheduler_ok(path: Path, config_json: str) -> None:
    from diffusers import DDPMScheduler

    try:
        with quiet_diffusers():
            scheduler = DDPMScheduler.from_config(json.loads(config_json))
    except Exception as exc:  # diffusers raises many types for bad configs
        raise BadInputError(f"{path} has a scheduler config diffusers cannot build ({cause_of(exc)})") from None
    require(bool(torch.isfinite(scheduler.alphas_cumprod).all()) and bool((scheduler.alphas_cumprod > 0).all()),
            f"{path} has a scheduler config with an invalid noise schedule")


def _check_data_description(path: Path, data: dict[str, Any], unet_config: dict[str, Any],
                            components: dict[str, Any] | None = None) -> None:
    """Types of the fields every command reads, and their agreement with the UNet config (through the
    VAE for text-to-image models: images are ``latent_scale`` × the latent size, with the VAE's channels)."""
    bad = f"{path} has corrupt metadata 'data' (%s)"
    names = data.get("class_names", [])
    require(isinstance(names, list) and all(isinstance(n, str) for n in names), bad % "class_names")
    require(isinstance(data.get("source", ""), str), bad % "source")
    for key in ("resolution", "channels", "split_seed", "num_train", "num_heldout"):
        require(key not in data or _is_int(data[key]), bad % key)
    size, channels = image_shape(unet_config, components)
    if "resolution" in data:
        require(data["resolution"] == size, bad % "resolution differs from the model's image size")
    if "channels" in data:
        require(data["channels"] == channels, bad % "channels differ from the model's image channels")
    if names and unet_config.get("num_class_embeds") is not None:
        require(unet_config["num_class_embeds"] in (len(names), len(names) + 1), bad % "class count differs from the UNet's class embeddings")


def image_shape(unet_config: dict[str, Any], components: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(image size, image channels) of a model: the UNet's for pixel models, through the VAE for latent ones."""
    if not components:
        return unet_config.get("sample_size"), unet_config.get("in_channels")
    vae = components.get("vae", {}).get("config", {}) if isinstance(components.get("vae"), dict) else {}
    from unlearnctl.checkpoint.components import latent_scale

    try:
        return unet_config["sample_size"] * latent_scale(components), vae.get("in_channels", 3)
    except (KeyError, TypeError):
        raise BadInputError("the checkpoint's components record has no VAE block_out_channels") from None


LINEAGE_FIELD_TYPES = {"command": (str,), "method": (str, type(None)), "params": (dict, type(None)),
                       "seed": (int, type(None)), "forget": (dict, type(None)), "parent_sha256": (str, type(None)),
                       "parent_weights_sha256": (str, type(None)), "weights_sha256": (str, type(None)),
                       "created": (str,), "wall_time_s": (int, float, type(None))}


def _check_lineage_types(path: Path, lineage: list[Any]) -> None:
    for i, entry in enumerate(lineage):
        require(isinstance(entry, dict) and isinstance(entry.get("command"), str),
                f"{path} has corrupt metadata 'lineage' (entry {i} is not an object with a command)")
        for key, types in LINEAGE_FIELD_TYPES.items():
            require(key not in entry or isinstance(entry[key], types),
                    f"{path} has corrupt metadata 'lineage' (entry {i}: {key} has the wrong type)")


@functools.lru_cache(maxsize=32)
def _expected_shapes(config_json: str) -> dict[str, list[int]]:
    """Tensor names and shapes of the UNet a config describes (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {name: list(t.shape) for name, t in build_unet(json.loads(config_json)).state_dict().items()}


def _check_weights_match_config(path: Path, header: dict[str, Any], unet_config: dict[str, Any]) -> None:
    expected = _expected_shapes(json.dumps(unet_config, sort_keys=True))
    found = {name: entry["shape"] for name, entry in header.items() if name != "__metadata__" and "/" not in name}
    missing, unexpected = expected.keys() - found.keys(), found.keys() - expected.keys()
    require(not missing and not unexpected, f"{path} weights do not match its UNet config "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    wrong = [name for name in expected if expected[name] != found[name]]
    if wrong:
        raise BadInputError(f"{path} weights do not match its UNet config (shape of {wrong[0]})")
