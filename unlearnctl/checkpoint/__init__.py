"""One self-describing ``.safetensors`` file per model (docs/format.md).

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

The package is split along its seams: :mod:`~unlearnctl.checkpoint.model` (the checkpoint object and its
lineage), :mod:`~unlearnctl.checkpoint.files` (atomic file I/O, saving and loading),
:mod:`~unlearnctl.checkpoint.validation` (what an untrusted file must satisfy) and
:mod:`~unlearnctl.checkpoint.diffusers_io` (diffusers folders). The names below are the public API.
"""

from unlearnctl.checkpoint.diffusers_io import export_diffusers, import_diffusers, import_single_file
from unlearnctl.checkpoint.files import (
    atomic_write_bytes, atomic_write_text, check_output_path, file_sha256, load_checkpoint, safetensors_bytes,
    save_checkpoint, serialize,
)
from unlearnctl.checkpoint.model import (
    Checkpoint, build_unet, default_scheduler, lineage_entry, metadata_integrity, now_utc, plain_config,
    quiet_diffusers, reproducible, versions, weights_sha256,
)
from unlearnctl.checkpoint.validation import (
    FORMAT_NAME, FORMAT_VERSION, MAX_HEADER_BYTES, PICKLE_SUFFIXES, REQUIRED_METADATA, read_header,
)

__all__ = [
    "Checkpoint", "FORMAT_NAME", "FORMAT_VERSION", "MAX_HEADER_BYTES", "PICKLE_SUFFIXES", "REQUIRED_METADATA",
    "atomic_write_bytes", "atomic_write_text", "build_unet", "check_output_path", "default_scheduler",
    "export_diffusers", "file_sha256", "import_diffusers", "import_single_file", "lineage_entry", "load_checkpoint", "metadata_integrity",
    "now_utc", "plain_config", "quiet_diffusers", "read_header", "reproducible", "safetensors_bytes",
    "save_checkpoint", "serialize", "versions", "weights_sha256",
]
