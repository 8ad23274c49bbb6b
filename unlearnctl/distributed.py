"""Multi-process runs on Hugging Face ``accelerate``, and mixed precision.

Every command that trains or samples — ``train``, ``unlearn``, ``relearn-attack``, ``evaluate``, ``sample``
— runs unchanged under ``accelerate launch``; the processes split the work and produce the file a
single process would::

    accelerate launch --multi_gpu --num_processes 4 $(which unlearnctl) unlearn ...           # 4 GPUs, NCCL
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 $(which unlearnctl) ...  # 2 CPU processes, gloo

How the work is split (data parallel, with the *same global batch* as a single-process run):

1. **Randomness.** Every process draws the randomness of the whole global batch of ``B`` samples from the
   one seeded generator (indices, label dropout, timesteps, noise, mixture coins) and keeps its slice:
   process ``r`` of ``W`` takes rows ``[r·B/W, (r+1)·B/W)``. A run's :class:`~unlearnctl.runtime.Runtime`
   holds this process's :class:`Shard` (:func:`shard_for`); the draws of
   :class:`~unlearnctl.methods.base.MethodContext` and :func:`~unlearnctl.diffusion.denoising_loss` take
   their rows through it; ``B`` must be divisible by ``W``.
2. **Gradients.** Each process computes its slice's mean losses and their gradients;
   :meth:`Runtime.gradients <unlearnctl.runtime.Runtime.gradients>` averages them over the processes (one all-reduce of a flat buffer). The mean of equal slice means is
   the global mean, so every gradient a method combines (SISS's ``‖g_a‖``, EraseDiff's λ) is the global one.
3. **Updates.** Every process then applies the same clipping and AdamW step to the same gradient, so the
   weights stay identical without being broadcast.
4. **Sampling.** :func:`sample_rows` gives each process a contiguous share of the images to generate;
   :func:`gather_rows` puts them back together, in order, on every process (DDIM: the same images as a
   single process).
5. **Files and output.** Only the main process writes files (:func:`is_main_process`) and prints.

Mixed precision (``--precision``, held by the run's :class:`~unlearnctl.runtime.Runtime`): ``bf16`` and
``fp16`` run the UNet's forward passes under ``torch.autocast`` (losses, gradients and weights stay float32); ``fp16`` also scales the loss before
backward (dynamic loss scale) so small gradients do not underflow. ``fp16`` needs a CUDA GPU; ``bf16``
also runs on CPUs (fast only with AMX / AVX-512-BF16; see docs/performance.md).

This module imports neither torch nor accelerate at import time: ``unlearnctl --help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unlearnctl.errors import BadInputError, require

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")


# --------------------------------------------------------------------------------------------- processes


def world_size() -> int:
    """Number of processes of this run (``WORLD_SIZE`` set by ``accelerate launch`` / ``torchrun``; else 1)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launched() -> bool:
    """True when this process is one of several started by ``accelerate launch`` (or ``torchrun``)."""
    return world_size() > 1


def state():
    """The ``accelerate.PartialState`` of this process; the first call joins the process group.

    CPU processes use gloo (when no GPU is visible or ``ACCELERATE_USE_CPU=1``), GPU processes NCCL, each
    on the GPU of its local rank.
    """
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=cpu)


def rank() -> int:
    """This process's index (0 = main)."""
    return state().process_index if launched() else 0


def is_main_process() -> bool:
    """True in a single-process run and in the main process of a multi-process run (the one that writes files)."""
    if not launched():
        return True
    return int(os.environ.get("RANK", "0")) == 0


def device(requested: str = "auto") -> "torch.device | None":
    """The device of this process in a multi-process run when ``requested`` is ``auto``; else ``None``
    (the caller resolves it as in a single-process run)."""
    if requested != "auto" or not launched():
        return None
    return state().device


# --------------------------------------------------------------------------------------------- data parallel


@dataclass(frozen=True)
class Shard:
    """Process ``rank`` of ``world`` keeps rows ``[rank·n, (rank+1)·n)`` of every global draw of ``world·n`` rows."""

    rank: int = 0
    world: int = 1

    def global_size(self, local: int) -> int:
        """Rows to draw so that this process's slice has ``local`` rows."""
        return local * self.world

    def take(self, tensor: "torch.Tensor | None") -> "torch.Tensor | None":
        """This process's rows of a global draw (``None`` passes through)."""
        if tensor is None or self.world == 1:
            return tensor
        local = tensor.shape[0] // self.world
        return tensor[self.rank * local:(self.rank + 1) * local]


def shard_for(batch_size: int) -> Shard:
    """This process's :class:`Shard` of a global batch of ``batch_size`` (the whole batch in a single-process run).

    ``batch_size`` must be divisible by the number of processes.
    """
    world = world_size()
    if world == 1:
        return Shard()
    if batch_size % world:
        raise BadInputError(f"batch size {batch_size} must be divisible by the number of processes ({world}); "
                            f"use --batch-size {max(world, batch_size // world * world)}")
    return Shard(rank(), world)


def all_reduce_mean(tensors: list["torch.Tensor"]) -> list["torch.Tensor"]:
    """The mean over processes of each tensor (one all-reduce of one flat buffer); unchanged with one process."""
    if not launched() or not tensors:
        return tensors
    import torch
    from accelerate.utils import reduce

    state()  # joined the process group
    flat = torch.cat([t.reshape(-1) for t in tensors])
    flat = reduce(flat, reduction="mean")
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


def broadcast_state(value: Any) -> Any:
    """``value`` as the main process has it (one-time method state: chosen constants, masks, alternatives),
    so processes can never start from different states."""
    if not launched():
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


# --------------------------------------------------------------------------------------------- sampling


def sample_rows(total: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of ``total`` images this process generates (contiguous shares)."""
    world = world_size()
    if world == 1:
        return 0, total
    r = rank()
    return total * r // world, total * (r + 1) // world


def gather_rows(part: "torch.Tensor", total: int) -> "torch.Tensor":
    """Every process's share from :func:`sample_rows`, concatenated in order, on every process."""
    if not launched():
        return part
    import torch
    from accelerate.utils import gather

    world = world_size()
    longest = max(total * (r + 1) // world - total * r // world for r in range(world))
    dev = state().device
    padded = torch.zeros((longest, *part.shape[1:]), dtype=part.dtype, device=dev)
    padded[:len(part)] = part.to(dev)
    everything = gather(padded).cpu()  # [world·longest, ...]
    rows = [everything[r * longest: r * longest + total * (r + 1) // world - total * r // world] for r in range(world)]
    return torch.cat(rows)


# --------------------------------------------------------------------------------------------- precision


def check_precision(precision: str, device: "torch.device | str | None" = None) -> str:
    """Validate ``--precision`` (and, given ``device``, that fp16 runs on CUDA)."""
    require(precision in PRECISIONS, f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if device is None:
        return precision
    kind = getattr(device, "type", str(device).split(":")[0])
    require(precision != "fp16" or kind == "cuda",
            f"--precision fp16 needs a CUDA GPU (device is {kind}); use --precision bf16 (CPU autocast) or fp32")
    return precision
