"""The relearning area of a curve and the attack budget it was measured under (docs/attack.md, "Attack budgets").

A relearning curve gives the forget rate ``r_k`` at attack steps ``s_0 < s_1 < … < s_K`` (usually ``s_0 = 0``).
Its **relearning area** is the curve's mean height over the attack, by the trapezoid rule::

    area = 1 / (s_K − s_0) · Σ_{k<K} (s_{k+1} − s_k) · (r_k + r_{k+1}) / 2

— a forget rate, in [0, 1]: the share of forget-condition samples showing the forgotten data, averaged over
the attack. A single point (or ``s_K = s_0``) has area ``r_0``. It rewards forgetting that stays gone all
along the attack, not only at its end, and is compared with retrain's area **under the same budget** (the
same auxiliary data, learning rate, steps and the rest of the recipe): retrain's curve shows what fine-tuning
on that auxiliary data brings to a model that never saw the forget set.

**Interval.** ``relearn_area_ci95_low``/``_high`` are the same trapezoid over the points' 95% Wilson lower
and upper ends: an *envelope*, not a confidence interval of the area. The points share their sampling noise
(the same initial noise at every step), so their errors are positively correlated; with perfectly correlated
errors the envelope is a 95% interval, with less correlated ones it is wider than one — conservative. A
curve whose points lack intervals (written before they were recorded) has none (``None``).
"""

from __future__ import annotations

import json
from typing import Any

# The attack recipe fields that make a budget (AttackConfig); the seed and the curve's own sampling are not the budget.
BUDGET_FIELDS = ("steps", "lr", "batch_size", "warmup_steps", "weight_decay", "label_dropout", "grad_clip")
GENERATED_FIELDS = ("num_generated", "generate_steps")  # part of the budget only with --aux generated


def relearn_area(points: list[dict[str, Any]]) -> dict[str, Any]:
    """``relearn_area`` of curve ``points`` (``{"step", "forget_rate"[, "forget_rate_ci95_low", …]}``) with its
    envelope (module docstring), the steps it spans and the number of points; ``None`` values without points."""
    points = sorted((p for p in points if isinstance(p.get("forget_rate"), (int, float))), key=lambda p: p["step"])
    if not points:
        return {"relearn_area": None, "relearn_area_ci95_low": None, "relearn_area_ci95_high": None,
                "relearn_area_steps": None, "relearn_area_points": 0}
    steps = [float(p["step"]) for p in points]

    def mean_height(values: list[float]) -> float:
        span = steps[-1] - steps[0]
        if span <= 0:
            return values[0]
        return sum((steps[k + 1] - steps[k]) * (values[k] + values[k + 1]) / 2 for k in range(len(steps) - 1)) / span

    area = mean_height([float(p["forget_rate"]) for p in points])
    low = high = None
    if all(isinstance(p.get("forget_rate_ci95_low"), (int, float)) and isinstance(p.get("forget_rate_ci95_high"), (int, float))
           for p in points):
        low = mean_height([float(p["forget_rate_ci95_low"]) for p in points])
        high = mean_height([float(p["forget_rate_ci95_high"]) for p in points])
    return {"relearn_area": area, "relearn_area_ci95_low": low, "relearn_area_ci95_high": high,
            "relearn_area_steps": int(steps[-1] - steps[0]), "relearn_area_points": len(points)}


def attack_budget(curve: dict[str, Any]) -> dict[str, Any]:
    """The budget of a curve dict (``unlearnctl.relearn-curve`` or one rebuilt from a lineage): the auxiliary
    data's spec and the recipe fields of :data:`BUDGET_FIELDS` (plus :data:`GENERATED_FIELDS` for ``generated``)."""
    attack = curve.get("attack") or {}
    aux = str((curve.get("aux") or {}).get("spec") or "?")
    fields = BUDGET_FIELDS + (GENERATED_FIELDS if aux.partition(":")[0] == "generated" else ())
    return {"aux": aux, **{name: attack.get(name) for name in fields}}


def budget_key(budget: dict[str, Any]) -> str:
    """A canonical string of ``budget``: curves compare only when their keys are equal."""
    return json.dumps(budget, sort_keys=True, default=str)


def budget_label(budget: dict[str, Any]) -> str:
    """``retain:0.5, lr 0.0001, 500 steps`` (the fields that usually vary; the key holds the rest)."""
    return f"{budget.get('aux')}, lr {budget.get('lr'):g}, {budget.get('steps')} steps" if isinstance(budget.get("lr"), (int, float)) \
        else f"{budget.get('aux')}, {budget.get('steps')} steps"
