"""Small tensor helpers shared by the loops: finiteness checks and moving nested state between devices."""

from __future__ import annotations

from typing import Any

import torch


def to_device(state: Any, device: "torch.device | str") -> Any:
    """``state`` with every tensor moved to ``device`` (method state restored for a GPU run)."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: to_device(v, device) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_device(v, device) for v in state)
    return state


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding a NaN/Inf, or ``None`` (one device sync)."""
    names = [name for name, t in tensors.items() if t.is_floating_point()]
    if not names:
        return None
    finite = torch.stack([torch.isfinite(tensors[name]).all() for name in names])
    if bool(finite.all()):
        return None
    return names[int((~finite).nonzero()[0])]


def finite_or_none(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """A CPU copy of ``weights`` if every value is finite (a last good state), else ``None``."""
    if first_nonfinite(weights) is not None:
        return None
    return {k: v.detach().cpu().clone() for k, v in weights.items()}
