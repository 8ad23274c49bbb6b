"""Checks that a model's weights can be used at all: every value finite.

A checkpoint or diffusers folder with a NaN/Inf weight loads and runs — its samples come out black or
noise — so without this check it scores a forget rate of 0 and passes gates, or makes ``unlearn`` stop
with "loss became nan; lower --lr" although the file, not the learning rate, is broken. Every command
that loads a model calls :func:`require_finite_weights` right after loading, and refuses the file
(exit 2) naming the first broken tensor.
"""

from __future__ import annotations

from typing import Mapping

import torch

from unlearnctl.errors import BadInputError


def nonfinite_tensor(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """``(name, count of NaN/Inf values)`` of the first floating-point tensor that holds any, else ``None``."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() or tensor.is_complex():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                return name, count
    return None


def nonfinite_message(state_dict: Mapping[str, torch.Tensor], source: object) -> str | None:
    """The one-line refusal for a model with non-finite weights, or ``None`` when every weight is finite."""
    found = nonfinite_tensor(state_dict)
    if found is None:
        return None
    name, count = found
    return (f"model {source} has non-finite weights in tensor {name} ({count} NaN/Inf values); "
            "the file is broken — re-export or retrain it")


def require_finite_weights(state_dict: Mapping[str, torch.Tensor], source: object) -> None:
    """Raise :class:`BadInputError` naming the first tensor of ``state_dict`` with a NaN/Inf value.

    ``source`` names the model in the message (its path, or the folder it was imported from).
    """
    message = nonfinite_message(state_dict, source)
    if message is not None:
        raise BadInputError(message)
