"""The explicit state of one run: device, precision, this process's share of every batch, the fp16 loss scale.

A :class:`Runtime` is made once per command (``train``, ``unlearn``, ``relearn-attack``, ``evaluate``,
``sample``) and passed down — to the :class:`~unlearnctl.denoisers.Denoiser` (autocast of its forward
passes), to a method's context (sharded random draws, averaged gradients) and to the training loops — so
nothing reads module globals::

    runtime = Runtime.create("cpu", precision="bf16", batch_size=64)
    with runtime.autocast():
        ...
    grads = runtime.gradients(loss, params)  # averaged over processes, loss-scaled under fp16

In a single-process fp32 run every method is the plain PyTorch operation (``Runtime()`` is that default).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from unlearnctl.distributed import Shard, all_reduce_mean, check_precision, shard_for
from unlearnctl.errors import require

if TYPE_CHECKING:
    import torch


class LossScale:
    """Dynamic loss scale for fp16 (halve on overflow, double after ``growth_interval`` good steps)."""

    def __init__(self, value: float = 2.0 ** 16, growth_interval: int = 2000):
        self.value, self.growth_interval, self.good = value, growth_interval, 0

    def accept(self, grads: list["torch.Tensor"]) -> bool:
        """True when every gradient is finite (and count the good step); else halve the scale."""
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


@dataclass
class Runtime:
    """Where and how a run computes.

    Attributes:
        device: where the model lives (``None``: wherever its weights are).
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (CUDA autocast, loss-scaled).
        shard: this process's rows of every global draw (:mod:`unlearnctl.distributed`).
        loss_scale: the dynamic loss scale of an fp16 run (made by :meth:`create`).
    """

    device: "torch.device | None" = None
    precision: str = "fp32"
    shard: Shard = field(default_factory=Shard)
    loss_scale: LossScale | None = None

    @classmethod
    def create(cls, device: "torch.device | str", precision: str = "fp32", batch_size: int | None = None) -> "Runtime":
        """A validated runtime; ``batch_size`` (the global batch) splits the run over the launched processes."""
        import torch

        device = torch.device(device)
        check_precision(precision, device)
        shard = shard_for(batch_size) if batch_size is not None else Shard()
        return cls(device, precision, shard, LossScale() if precision == "fp16" else None)

    # ----- random draws of the global batch

    def global_size(self, local: int) -> int:
        return self.shard.global_size(local)

    def take(self, tensor: "torch.Tensor | None") -> "torch.Tensor | None":
        return self.shard.take(tensor)

    # ----- forward passes

    def autocast(self, device: "torch.device | None" = None) -> contextlib.AbstractContextManager:
        """``torch.autocast`` at this precision (a no-op at fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        import torch

        kind = (device or self.device or torch.device("cpu")).type
        return torch.autocast(device_type=kind, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    # ----- gradients

    def gradients(self, loss: "torch.Tensor", params: list["torch.Tensor"], retain_graph: bool = False) -> list["torch.Tensor"]:
        """∇_θ loss aligned with ``params`` (zeros where unused), loss-scaled under fp16, averaged over processes."""
        import torch

        scale = self.loss_scale
        while True:
            target = loss if scale is None else loss * scale.value
            grads = torch.autograd.grad(target, params, retain_graph=retain_graph or scale is not None, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            if scale is not None:
                grads = [g / scale.value for g in grads]
            if self.shard.world > 1:
                grads = all_reduce_mean(grads)  # inf/NaN on any process reaches every process
            if scale is None or scale.accept(grads):
                return grads

    def backward(self, loss: "torch.Tensor", params: list["torch.Tensor"]) -> None:
        """``loss.backward()`` into ``p.grad``, averaged over processes; under fp16 the loss is scaled and an
        overflowed backward is recomputed at a lower scale."""
        scale = self.loss_scale
        while True:
            for p in params:
                p.grad = None
            (loss if scale is None else loss * scale.value).backward(retain_graph=scale is not None)
            with_grad = [p for p in params if p.grad is not None]
            if scale is not None:
                for p in with_grad:
                    p.grad.div_(scale.value)
            if self.shard.world > 1:
                for p, g in zip(with_grad, all_reduce_mean([p.grad for p in with_grad])):
                    p.grad.copy_(g)
            if scale is None or scale.accept([p.grad for p in with_grad]):
                return

    def mean_floats(self, values: list[float]) -> list[float]:
        """The mean over processes of each Python float (loss terms for progress, reports, guards)."""
        if self.shard.world == 1 or not values:
            return values
        import torch

        from unlearnctl.distributed import state

        reduced = all_reduce_mean([torch.tensor(values, dtype=torch.float64, device=state().device)])[0]
        return [float(v) for v in reduced.cpu()]
