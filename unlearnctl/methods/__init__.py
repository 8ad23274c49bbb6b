"""The registry of unlearning methods: one file per method, registered by name where it is defined.

=============  ==============================================================================
name           method
=============  ==============================================================================
``siss``       SISS, importance-sampled defensive mixture, one forward (Alberti et al., ICLR 2025)
``siss-no-is`` SISS without importance sampling: two forwards, same gradient scaling
``erasediff``  EraseDiff, first-order constrained update (Wu et al., arXiv 2401.05779)
``dimum``      DiMUM, memorise alternative data in place of the target (Yuan et al., arXiv 2512.03564)
``salun``      SalUn, saliency-masked random labelling (Fan et al., ICLR 2024)
``neggrad``    NegGrad, gradient ascent on the forget set (with a divergence guard)
``naive``      naive deletion: fine-tune on the retain set only
``retrain``    exact unlearning: train from scratch on the retain set with the base's recipe
=============  ==============================================================================

``get_method(name)`` returns the class; unknown names raise :class:`BadInputError` listing the valid ones.
The CLI's ``--method`` choices, help and per-method options come from here, so adding a method means
adding a file (and its import below), never touching the CLI.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from unlearnctl.errors import BadInputError

_REGISTRY: dict[str, type] = {}
M = TypeVar("M", bound=type)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register an unlearning method under ``name``."""

    def decorate(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} registered twice")  # a programming error, not user input
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type:
    """The method class registered as ``name``."""
    if name not in _REGISTRY:
        raise BadInputError(f"unknown method {name!r}; choose one of: {', '.join(available_methods())}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    """Registered method names, in the order of the table above."""
    return list(_REGISTRY)


# Importing the modules registers the methods (order = order in --help).
from unlearnctl.methods import siss, siss_no_is, erasediff, dimum, salun, neggrad, naive, retrain  # noqa: E402,F401
