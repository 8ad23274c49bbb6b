"""One self-describing ``.safetensors`` file per model (DESIGN §3).

Tensors are the UNet state dict. Metadata (``str -> JSON string``) carries everything needed to rebuild,
verify and re-run the model:

=====================  ===================================================================
key                    content
=====================  ===================================================================
``format``             ``"unlearnctl"``
``format_version``     ``"1"``
``unet_config``        diffusers ``UNet2DModel`` config
``scheduler_config``   diffusers ``DDPMScheduler`` config (the noise schedule of training)
``data``               data description: source, resolution, channels, class names,
                       training-set fingerprint, split seed (see :mod:`unlearnctl.data`)
``lineage``            list of entries, one per command that produced or changed the weights
``integrity``          sha256 over the canonical JSON of the four entries above (the newest
                       lineage entry holds ``weights_sha256``, so it covers the weights too):
                       ``inspect --verify`` flags any edit made outside the tool
=====================  ===================================================================

Loading never runs code from the file: pickle formats are refused, and the safetensors header is
validated (sizes, dtypes, shapes, offsets, required metadata) before a single tensor is read.
Writes are atomic: a temporary file in the target folder, flushed, fsynced and renamed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import struct
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from unlearnctl.errors import BadInputError, require

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
MAX_TRAIN_TIMESTEPS = 100_000
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


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
        """Class index used for the unconditional branch of classifier-free guidance."""
        return self.unet_config["num_class_embeds"] - 1 if self.conditional else None

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


def build_unet(unet_config: dict[str, Any]) -> "torch.nn.Module":
    """``UNet2DModel.from_config`` with a one-line error for a config diffusers cannot build."""
    from diffusers import UNet2DModel

    try:
        with quiet_diffusers():
            return UNet2DModel.from_config(unet_config)
    except Exception as exc:  # diffusers raises many types for bad configs
        raise BadInputError(f"UNet config cannot be built by diffusers: {str(exc)[:200]}") from None


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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- writing


def check_output_path(path: str | Path, suffix: str | None = ".safetensors") -> Path:
    """Validate an output path before any work starts, so bad input never costs a run."""
    path = Path(path)
    if suffix is not None:
        require(path.suffix == suffix, f"output file {path} must end in {suffix}")
    parent = path.parent if str(path.parent) else Path(".")
    require(parent.is_dir(), f"output folder {parent} does not exist; create it first")
    require(not path.is_dir(), f"output path {path} is a folder; give a file name")
    require(_can_create_in(parent, path.name), f"output folder {parent} is not writable; choose another --out folder")
    return path


def _can_create_in(folder: Path, name: str) -> bool:
    """Create and remove a probe file: unlike ``os.access`` this also holds for root and special folders.

    The probe is named like the temporary file of :func:`atomic_write_bytes` (``.NAME.XXXX.tmp``), so a
    process killed at this instant leaves nothing but the one documented kind of leftover.
    """
    if not os.access(folder, os.W_OK):
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", suffix=".tmp"):
            return True
    except OSError:
        return False


def atomic_write_bytes(path: str | Path, payload: bytes, fsync: bool = True) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the whole new one, never a part.

    In a multi-process run (``accelerate launch``) only the main process writes: one file, written once.
    ``fsync=False`` keeps the all-or-nothing rename (enough when a process is killed) but skips the flush to
    disk that makes the file survive a power cut: for thousands of sample PNGs, where it costs ~5 ms each.
    """
    from unlearnctl.distributed import is_main_process

    if not is_main_process():
        return
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(payload)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(handle.name, 0o666 & ~_umask())  # temp files are created 0600; give the usual mode
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``safetensors.torch.save`` with a deterministic header.

    safetensors keeps metadata in a hash map whose order changes from run to run, so the same checkpoint
    would get different bytes (and sha256) each time. The header is re-emitted with sorted metadata keys
    and tensors in file order; the tensor bytes are untouched.
    """
    from safetensors.torch import save

    payload = save(tensors, metadata=metadata)
    (size,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8:8 + size])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items()))}
    ordered.update(sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]))
    raw = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw + payload[8 + size:]


def serialize(checkpoint: Checkpoint) -> bytes:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in checkpoint.state_dict.items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "unet_config": json.dumps(checkpoint.unet_config, sort_keys=True),
        "scheduler_config": json.dumps(checkpoint.scheduler_config, sort_keys=True),
        "data": json.dumps(checkpoint.data, sort_keys=True),
        "lineage": json.dumps(checkpoint.lineage),
        "integrity": metadata_integrity(checkpoint),
    }
    return safetensors_bytes(tensors, metadata)


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Atomically write ``checkpoint`` to ``path``; returns the path and sets ``checkpoint.sha256``.

    The newest lineage entry gets ``weights_sha256`` so ``inspect --verify`` can detect weights edited
    outside the tool.
    """
    path = check_output_path(path)
    if checkpoint.lineage:
        checkpoint.lineage[-1]["weights_sha256"] = weights_sha256(checkpoint.state_dict)
    payload = serialize(checkpoint)
    atomic_write_bytes(path, payload)
    checkpoint.path, checkpoint.sha256 = path, hashlib.sha256(payload).hexdigest()
    checkpoint.integrity = metadata_integrity(checkpoint)
    return path


# --------------------------------------------------------------------------------------------- reading


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
    _check_data_description(path, parsed["data"], parsed["unet_config"])
    _check_lineage_types(path, parsed["lineage"])
    integrity = metadata.get("integrity")
    parsed["integrity"] = integrity if isinstance(integrity, str) else None
    return parsed


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
        require(_is_int(value) and low <= value <= high, bad % key)
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


@functools.lru_cache(maxsize=32)
def _scheduler_ok(path: Path, config_json: str) -> None:
    from diffusers import DDPMScheduler

    try:
        with quiet_diffusers():
            scheduler = DDPMScheduler.from_config(json.loads(config_json))
    except Exception as exc:  # diffusers raises many types for bad configs
        raise BadInputError(f"{path} has a scheduler config diffusers cannot build ({str(exc)[:100]})") from None
    require(bool(torch.isfinite(scheduler.alphas_cumprod).all()) and bool((scheduler.alphas_cumprod > 0).all()),
            f"{path} has a scheduler config with an invalid noise schedule")


def _check_data_description(path: Path, data: dict[str, Any], unet_config: dict[str, Any]) -> None:
    """Types of the fields every command reads, and their agreement with the UNet config."""
    bad = f"{path} has corrupt metadata 'data' (%s)"
    names = data.get("class_names", [])
    require(isinstance(names, list) and all(isinstance(n, str) for n in names), bad % "class_names")
    require(isinstance(data.get("source", ""), str), bad % "source")
    for key in ("resolution", "channels", "split_seed", "num_train", "num_heldout"):
        require(key not in data or _is_int(data[key]), bad % key)
    if "resolution" in data:
        require(data["resolution"] == unet_config["sample_size"], bad % "resolution differs from the UNet's sample_size")
    if "channels" in data:
        require(data["channels"] == unet_config["in_channels"], bad % "channels differ from the UNet's in_channels")
    if names and unet_config.get("num_class_embeds") is not None:
        require(len(names) + 1 == unet_config["num_class_embeds"], bad % "class count differs from the UNet's class embeddings")


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


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and validate a checkpoint. Every problem with the file raises :class:`BadInputError`."""
    from safetensors.torch import load_file

    path = Path(path)
    _refuse_unsafe_path(path)
    header = read_header(path)
    meta = _parse_metadata(path, header.get("__metadata__"))
    _check_weights_match_config(path, header, meta["unet_config"])
    try:
        state_dict = load_file(str(path))
    except Exception as exc:  # safetensors' own checks, should ours miss something
        raise BadInputError(f"{path} is not a readable safetensors file ({str(exc)[:120]})") from None
    return Checkpoint(state_dict=state_dict, path=path, sha256=file_sha256(path), **meta)


@functools.lru_cache(maxsize=32)
def _expected_shapes(config_json: str) -> dict[str, list[int]]:
    """Tensor names and shapes of the UNet a config describes (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {name: list(t.shape) for name, t in build_unet(json.loads(config_json)).state_dict().items()}


def _check_weights_match_config(path: Path, header: dict[str, Any], unet_config: dict[str, Any]) -> None:
    expected = _expected_shapes(json.dumps(unet_config, sort_keys=True))
    found = {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}
    missing, unexpected = expected.keys() - found.keys(), found.keys() - expected.keys()
    require(not missing and not unexpected, f"{path} weights do not match its UNet config "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    wrong = [name for name in expected if expected[name] != found[name]]
    if wrong:
        raise BadInputError(f"{path} weights do not match its UNet config (shape of {wrong[0]})")


# --------------------------------------------------------------------------------------------- diffusers


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
        raise BadInputError(f"diffusers could not load {unet_dir}: {str(exc)[:160]}") from None
    scheduler_dir = directory / "scheduler"
    scheduler = (DDPMScheduler.from_pretrained(scheduler_dir) if (scheduler_dir / "scheduler_config.json").is_file()
                 else default_scheduler())
    entry = lineage_entry("import", {"source": str(source or directory)}, seed=None, wall_time_s=0.0)
    return Checkpoint(
        state_dict={k: v.detach().clone() for k, v in unet.state_dict().items()},
        unet_config=plain_config(unet.config),
        scheduler_config=plain_config(scheduler.config),
        data=data,
        lineage=[entry],
    )


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
