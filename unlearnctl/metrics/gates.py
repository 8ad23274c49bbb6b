"""``--gate`` conditions on evaluation results, for CI.

Syntax: ``NAME OP VALUE`` with ``OP`` one of ``<=  >=  <  >  ==`` and ``NAME`` a result key
(``fid``, ``forget_rate``, ``membership_auc``, ... — see ``docs/metrics.md``).

* absolute: ``forget_rate<=0.05``, ``fid<=12``, ``retain_accuracy>=0.9``
* relative to a baseline JSON (``--baseline base.json``): a signed percentage, ``fid<=+10%`` means
  "at most the baseline's fid plus 10% of its magnitude", ``retain_accuracy>=-5%`` "at least the
  baseline minus 5%": threshold = ``b + |b| · p / 100``.

Syntax errors, unknown names and relative gates without a baseline raise :class:`BadInputError` before
any work starts; a gate that does not hold is reported by :func:`check_gates`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from unlearnctl.errors import BadInputError, require

OPERATORS = {
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
}
_GATE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|<|>)\s*(\S+)\s*$")
_RELATIVE = re.compile(r"^([+-])(\d+(?:\.\d*)?|\.\d+)%$")


@dataclass(frozen=True)
class Gate:
    """One parsed condition ``name op value`` (``value`` a signed percentage when ``relative``)."""

    text: str
    name: str
    op: str
    value: float
    relative: bool = False

    def threshold(self, baseline: dict[str, Any] | None) -> float:
        if not self.relative:
            return self.value
        base = _number(baseline, self.name, "baseline")
        return base + abs(base) * self.value / 100.0

    def failure(self, result: dict[str, Any], baseline: dict[str, Any] | None = None) -> str | None:
        """``None`` if the gate holds, else a one-line reason."""
        value = result.get(self.name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            reason = result.get(f"{self.name}_unsupported_reason")
            return f"{self.text}: {self.name} was not measured ({reason or value})"
        limit = self.threshold(baseline)
        if OPERATORS[self.op](float(value), limit):
            return None
        origin = f" (baseline {_number(baseline, self.name, 'baseline'):.6g} {self.value:+g}%)" if self.relative else ""
        return f"{self.text}: {self.name} = {value:.6g}, not {self.op} {limit:.6g}{origin}"


def parse_gate(text: str) -> Gate:
    """Parse ``"fid<=12"`` / ``"fid<=+10%"``; bad syntax raises :class:`BadInputError`."""
    match = _GATE.match(text)
    if not match:
        raise BadInputError(f"gate {text!r} is not NAME OP VALUE with OP one of <=, >=, <, >, == (e.g. \"fid<=12\", \"fid<=+10%\")")
    name, op, raw = match.groups()
    relative = _RELATIVE.match(raw)
    if relative:
        sign, number = relative.groups()
        return Gate(text.strip(), name, op, float(number) * (1 if sign == "+" else -1), relative=True)
    if raw.endswith("%"):
        raise BadInputError(f"gate {text!r}: a relative value needs a sign, e.g. +10% or -5%")
    try:
        value = float(raw)
    except ValueError:
        raise BadInputError(f"gate {text!r}: {raw!r} is not a number or a signed percentage like +10%") from None
    require(math.isfinite(value), f"gate {text!r}: the value must be finite")
    return Gate(text.strip(), name, op, value)


def parse_gates(texts: Iterable[str], known: Iterable[str], baseline: dict[str, Any] | None = None) -> list[Gate]:
    """Parse every gate and check names against ``known`` and relative gates against ``baseline``."""
    known = set(known)
    gates = [parse_gate(text) for text in texts]
    for gate in gates:
        require(gate.name in known, f"gate {gate.text!r}: unknown metric {gate.name!r}; this evaluation measures "
                f"{', '.join(sorted(known)) or 'nothing'}")
        if gate.relative:
            require(baseline is not None, f"gate {gate.text!r} is relative; pass --baseline BASE.json")
            _number(baseline, gate.name, "baseline")
    return gates


def check_gates(gates: Iterable[Gate], result: dict[str, Any], baseline: dict[str, Any] | None = None) -> list[str]:
    """The failure lines of the gates that do not hold (empty = all pass)."""
    return [reason for gate in gates if (reason := gate.failure(result, baseline)) is not None]


def load_baseline(path: str | Path) -> dict[str, Any]:
    """A previous ``evaluate --json`` file (any JSON object of metric values)."""
    from unlearnctl.jsonfile import read_json_object

    return read_json_object(path, "baseline file", " (an evaluate --json result)")


def _number(data: dict[str, Any] | None, name: str, what: str) -> float:
    value = (data or {}).get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise BadInputError(f"the {what} has no number for {name!r} (found {value!r}); evaluate the baseline with that metric")
    return float(value)
