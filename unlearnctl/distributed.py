"""Multi-process runs on Hugging Face ``accelerate``, and mixed precision.

Every command that trains or samples — ``train``, ``unlearn``, ``relearn-attack``, ``evaluate``, ``sample``
— runs unchanged under ``accelerate launch``; the processes split the work and produce the file a
single process would::

    accelerate launch --multi_gpu --num_processes 4 $(which unlearnctl) unlearn ...           # 4 GPUs, NCCL
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 $(which unlearnctl) ...  # 2 CPU processes, gloo

How the work is split (data parallel, with the *same global batch* as a single-process run):

1. **Randomness.** Every process draws the randomness of the whole global batch of ``B`` samples from the
   one seeded generator (indices, label dropout, timesteps, noise, mixture coins) and keeps its slice:
   process ``r`` of ``W`` takes rows ``[r·B/W, (r+1)·B/W)``. Inside :func:`data_parallel`, the draws of
   :class:`~unlearnctl.methods.base.MethodContext` and :func:`~unlearnctl.diffusion.denoising_loss` do this
   through :func:`current_shard`; ``B`` must be divisible by ``W``.
2. **Gradients.** Each process computes its slice's mean losses and their gradients; :func:`gradients`
   averages them over the processes (one all-reduce of a flat buffer). The mean of equal slice means is
   the global mean, so every gradient a method combines (SISS's ``‖g_a‖``, EraseDiff's λ) is the global one.
3. **Updates.** Every process then applies the same clipping and AdamW step to the same gradient, so the
   weights stay identical without being broadcast.
4. **Sampling.** :func:`sample_rows` gives each process a contiguous share of the images to generate;
   :func:`gather_rows` puts them back together, in order, on every process (DDIM: the same images as a
   single process).
5. **Files and output.** Only the main process writes files (:func:`is_main_process`) and prints.

Mixed precision (``--precision``): ``bf16`` and ``fp16`` run the UNet's forward passes under
``torch.autocast`` (losses, gradients and weights stay float32); ``fp16`` also scales the loss before
backward (dynamic loss scale) so small gradients do not underflow. ``fp16`` needs a CUDA GPU; ``bf16``
also runs on CPUs (fast only with AMX / AVX-512-BF16; see docs/performance.md).

This module imports neither torch nor accelerate at import time: ``unlearnctl --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

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


_NO_SHARD = Shard()
_active: Shard | None = None


def current_shard() -> Shard:
    """The shard of the enclosing :func:`data_parallel` block; outside one, the whole batch (no slicing)."""
    return _active or _NO_SHARD


@contextlib.contextmanager
def data_parallel(batch_size: int) -> Iterator[Shard]:
    """Split every draw and average every gradient over the processes inside this block (see the module doc).

    In a single-process run this does nothing. ``batch_size`` is the global batch; it must be divisible by
    the number of processes.
    """
    global _active
    world = world_size()
    if world == 1:
        yield _NO_SHARD
        return
    if batch_size % world:
        raise BadInputError(f"batch size {batch_size} must be divisible by the number of processes ({world}); "
                            f"use --batch-size {max(world, batch_size // world * world)}")
    previous, _active = _active, Shard(rank(), world)
    try:
        yield _active
    finally:
        _active = previous


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


def mean_floats(values: list[float]) -> list[float]:
    """The mean over processes of each Python float (loss terms for progress, reports, guards)."""
    if current_shard().world == 1 or not values:
        return values
    import torch

    reduced = all_reduce_mean([torch.tensor(values, dtype=torch.float64, device=state().device)])[0]
    return [float(v) for v in reduced.cpu()]


def broadcast_state(value: Any) -> Any:
    """``value`` as the main process has it (one-time method state: chosen constants, masks, alternatives),
    so processes can never start from different states."""
    if not launched():
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


# --------------------------------------------------------------------------------------------- gradients


def gradients(loss: "torch.Tensor", params: list["torch.Tensor"], retain_graph: bool = False) -> list["torch.Tensor"]:
    """∇_θ loss aligned with ``params`` (zeros where unused), loss-scaled under fp16, averaged over the
    processes inside :func:`data_parallel`."""
    import torch

    scale = _loss_scale.value if _precision == "fp16" else None
    while True:
        target = loss if scale is None else loss * scale
        keep = retain_graph or scale is not None
        grads = torch.autograd.grad(target, params, retain_graph=keep, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if scale is not None:
            grads = [g / scale for g in grads]
        if current_shard().world > 1:
            grads = all_reduce_mean(grads)  # inf/NaN on any process reaches every process
        if scale is None or _loss_scale.accept(grads):
            return grads
        scale = _loss_scale.value  # overflow: the scale was halved; recompute from the kept graph


def backward(loss: "torch.Tensor", params: list["torch.Tensor"]) -> None:
    """``loss.backward()`` into ``p.grad``, averaged over the processes inside :func:`data_parallel`; under
    fp16 the loss is scaled (dynamic scale) and overflowed gradients are recomputed at a lower scale."""
    if _precision != "fp16":
        loss.backward()
        reduce_gradients(params)
        return
    while True:
        scale = _loss_scale.value
        for p in params:
            p.grad = None
        (loss * scale).backward(retain_graph=True)
        with_grad = [p for p in params if p.grad is not None]
        for p in with_grad:
            p.grad.div_(scale)
        reduce_gradients(params)
        if _loss_scale.accept([p.grad for p in with_grad]):
            return


def reduce_gradients(params: list["torch.Tensor"]) -> None:
    """Average ``p.grad`` over the processes inside :func:`data_parallel` (after ``loss.backward()``)."""
    if current_shard().world == 1:
        return
    with_grad = [p for p in params if p.grad is not None]
    for p, g in zip(with_grad, all_reduce_mean([p.grad for p in with_grad])):
        p.grad.copy_(g)


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


_precision = "fp32"


class _LossScale:
    """Dynamic loss scale for fp16 (halve on overflow, double after ``growth_interval`` good steps)."""

    def __init__(self, value: float = 2.0 ** 16, growth_interval: int = 2000):
        self.value, self.growth_interval, self.good = value, growth_interval, 0

    def accept(self, grads: list["torch.Tensor"]) -> bool:
        import torch

        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        if not finite:
            self.value, self.good = self.value / 2, 0
            require(self.value >= 1.0, "fp16 gradients overflow even without loss scaling; use --precision bf16 or fp32")
            return False
        self.good += 1
        if self.good % self.growth_interval == 0:
            self.value *= 2
        return True


_loss_scale = _LossScale()


def check_precision(precision: str, device: "torch.device | str | None" = None) -> str:
    """Validate ``--precision`` (and, given ``device``, that fp16 runs on CUDA)."""
    require(precision in PRECISIONS, f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if device is None:
        return precision
    kind = getattr(device, "type", str(device).split(":")[0])
    require(precision != "fp16" or kind == "cuda",
            f"--precision fp16 needs a CUDA GPU (device is {kind}); use --precision bf16 (CPU autocast) or fp32")
    return precision


@contextlib.contextmanager
def use_precision(precision: str, device: "torch.device | str") -> Iterator[str]:
    """Run the UNet forwards inside this block at ``precision`` (see :func:`autocast`)."""
    global _precision, _loss_scale
    check_precision(precision, device)
    previous, _precision = _precision, precision
    if precision == "fp16":
        _loss_scale = _LossScale()
    try:
        yield precision
    finally:
        _precision = previous


def current_precision() -> str:
    return _precision


def autocast(device: "torch.device") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the current precision on ``device`` (a no-op at fp32)."""
    if _precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if _precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
