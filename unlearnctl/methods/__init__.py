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

This registry is the only list of methods. Every module of this package is imported on first use, so
adding a method means adding its file (a class decorated with :func:`register_method`); the CLI's
``--method`` choices, help and per-method options (:func:`method_options`), the demo's plan and the
benchmarks' method lists all come from here. ``get_method(name)`` returns the class; unknown names raise
:class:`BadInputError` listing the valid ones.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

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


def unregister_method(name: str) -> None:
    """Remove ``name`` from the registry (tests that register a throwaway method)."""
    _REGISTRY.pop(name, None)


def get_method(name: str) -> type:
    """The method class registered as ``name``."""
    _discover()
    if name not in _REGISTRY:
        raise BadInputError(f"unknown method {name!r}; choose one of: {', '.join(available_methods())}")
    return _REGISTRY[name]


def available_methods(scenario: str | None = None, exact: bool | None = None, model: str | None = None) -> list[str]:
    """Registered method names in listing order (each class's ``order``, then name).

    ``scenario``: only methods taking part in that kind of experiment scenario (``class``, ``canary``,
    ``concept``: :class:`~unlearnctl.methods.base.Method`); ``exact``: only exact (``True``) or only
    fine-tuning (``False``) methods; ``model``: only methods that run on that model family (``pixel``,
    ``text-to-image``: their ``models``).
    """
    _discover()
    classes = sorted(_REGISTRY.values(), key=lambda cls: (cls.order, cls.name))
    return [cls.name for cls in classes
            if (scenario is None or scenario in cls.scenarios) and (exact is None or bool(cls.exact) == exact)
            and (model is None or model in cls.models)]


@dataclass
class MethodOption:
    """One per-method CLI option: a flag with one meaning, shared by the methods that declare it alike."""

    flag: str
    dest: str  # the Python name of the CLI parameter
    type: type
    help: str
    default: Any
    fields: dict[str, str] = field(default_factory=dict)  # method name → its config field

    @property
    def methods(self) -> list[str]:
        return list(self.fields)

    def describe(self) -> str:
        default = "automatic" if self.default is None else self.default
        return f"{', '.join(self.methods)}: {self.help} (default {default})"


def method_options() -> dict[str, MethodOption]:
    """Every method parameter as one CLI option, keyed by flag.

    Two methods may share a flag only if it means the same thing (same type, help and default); a clash
    is a programming error raised here, so no flag ever carries two meanings.
    """
    options: dict[str, MethodOption] = {}
    for name in available_methods():
        for info in get_method(name).Config.options():
            dest = info.flag.lstrip("-").replace("-", "_")
            option = options.setdefault(info.flag, MethodOption(info.flag, dest + "_" * keyword.iskeyword(dest),
                                                                 info.type, info.help, info.default))
            if (option.type, option.help, option.default) != (info.type, info.help, info.default):
                raise ValueError(f"{info.flag} of method {name} means something else than {info.flag} of "
                                 f"{', '.join(option.methods)}; give one of them its own flag (param(..., flag=...))")
            option.fields[name] = info.name
    return options


_discovered = False


def _discover() -> None:
    """Import every module of this package once (importing a method's file registers it)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
