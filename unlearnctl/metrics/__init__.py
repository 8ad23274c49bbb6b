"""The metric registry: every metric group ``evaluate`` can compute, registered in one visible place.

Like torch-fidelity's ``registry.py``: a metric group is registered by name at its definition
(``@register_metric("quality", keys={...})``), names are validated, and unknown names raise an error
listing the valid ones. Each group declares the flat result keys it produces with a one-line
description — together they are the documented JSON schema of ``unlearnctl evaluate --json``
(``docs/metrics.md``), and ``--gate`` names are checked against them before any sampling starts.

This module imports nothing heavy, so the CLI can list metrics without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from unlearnctl.errors import BadInputError

if TYPE_CHECKING:
    from unlearnctl.metrics.evaluate import EvalContext


@dataclass(frozen=True)
class Metric:
    """A registered metric group.

    Attributes:
        name: registry name (``quality``, ``forget``, ``retain``, ``membership``).
        keys: result key → one-line description; the keys this group adds to the flat result dict.
        compute: ``compute(context) -> dict`` returning values for (a subset of) ``keys``.
        applies: ``applies(context) -> str | None``: ``None`` when the group can be computed for this
            model and forget set, else the reason it is skipped (its keys are then ``null``).
        uses_samples: whether it scores generated samples (an evaluation of groups that do not, such as
            the membership audit, generates nothing).
    """

    name: str
    keys: dict[str, str]
    compute: Callable[["EvalContext"], dict[str, Any]]
    applies: Callable[["EvalContext"], str | None]
    uses_samples: bool = True


METRICS: dict[str, Metric] = {}


def register_metric(name: str, keys: dict[str, str], applies: Callable[["EvalContext"], str | None] | None = None,
                    uses_samples: bool = True):
    """Decorator registering ``compute`` as metric group ``name`` producing ``keys``."""
    if not name or name.strip() != name or not name.replace("-", "").isalnum():
        raise ValueError(f"metric name {name!r} must be a non-empty alphanumeric word")
    if name in METRICS:
        raise ValueError(f"metric {name!r} is already registered")
    taken = {key for metric in METRICS.values() for key in metric.keys}
    clash = sorted(taken & keys.keys())
    if clash:
        raise ValueError(f"metric {name!r} redefines result keys {clash}")

    def decorate(compute: Callable[["EvalContext"], dict[str, Any]]):
        METRICS[name] = Metric(name, dict(keys), compute, applies or (lambda context: None), uses_samples)
        return compute

    return decorate


def get_metric(name: str) -> Metric:
    _load_builtin()
    if name not in METRICS:
        raise BadInputError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return METRICS[name]


def metric_names() -> list[str]:
    _load_builtin()
    return list(METRICS)


def result_keys() -> dict[str, str]:
    """Every metric key any registered group can produce, with its description."""
    _load_builtin()
    return {key: text for metric in METRICS.values() for key, text in metric.keys.items()}


def _load_builtin() -> None:
    import unlearnctl.metrics.evaluate  # noqa: F401  (registers the built-in groups)
