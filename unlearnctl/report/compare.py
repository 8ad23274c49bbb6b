"""Turn runs into one comparison: rows grouped by scenario and method, differences to the reference.

::

    from unlearnctl.report import compare, load_runs

    comparison = compare(load_runs(["base.json", "retrain.json", "siss.json", "siss-attacked.json"]))
    print(comparison.to_markdown())

Rules (docs/report.md):

* A **scenario** is one training set and one forget set (their fingerprints); runs of different scenarios
  are never compared with each other.
* Inside a scenario rows go: the base, the reference (``retrain``), then every method in registry order,
  each unlearned model followed by its attacked version(s) (matched by the attacked file's
  ``parent_sha256``).
* The **reference** is the scenario's exact-unlearning model (``retrain`` or ``train --exclude-*``, not
  attacked). Every row shows ``Δ`` = its value − the reference's for the headline metrics.
* The **relearn gap** of an attacked row is its forget rate − the forget rate of the model it attacked
  (positive = forgetting came back), both from the evaluations given.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from unlearnctl.report.runs import Run

SCHEMA = "unlearnctl.compare/1"

# (key, column title, decimals, direction: -1 lower is better, +1 higher is better, 0 neither)
METRICS: tuple[tuple[str, str, int, int], ...] = (
    ("forget_rate", "forget rate", 3, -1),
    ("retain_accuracy", "retain acc", 3, +1),
    ("fid", "FID", 2, -1),
    ("kid", "KID", 4, -1),
    ("precision", "precision", 3, +1),
    ("recall", "recall", 3, +1),
    ("membership_auc", "MIA AUC", 3, 0),
    ("membership_loss_ratio", "loss ratio", 3, 0),
)
DELTA_KEYS = ("forget_rate", "retain_accuracy", "fid", "kid", "precision", "recall", "membership_auc")
TABLE_KEYS = ("forget_rate", "retain_accuracy", "fid", "precision", "recall", "membership_auc")  # terminal/markdown
DECIMALS = {key: decimals for key, _, decimals, _ in METRICS} | {"relearn_gap": 3}
TITLES = {key: title for key, title, _, _ in METRICS} | {"relearn_gap": "relearn gap"}


@dataclass
class Row:
    """One run in the comparison."""

    run: Run
    scenario: str  # scenario id ("s1", "s2", ...)
    values: dict[str, Any]  # metric key -> value (None when not measured)
    deltas: dict[str, float | None]  # metric key -> value − reference value
    relearn_gap: float | None = None  # attacked rows: forget rate − forget rate of the attacked model
    attacked_from: str | None = None  # attacked rows: name of the run it attacked, if compared

    @property
    def is_reference(self) -> bool:
        return self.run.role == "reference"

    def flat(self) -> dict[str, Any]:
        """One flat dict (CSV row, JSON row)."""
        run = self.run
        sampler = run.provenance.get("sampler") or {}
        row = {"run": run.name, "source": run.source, "scenario": self.scenario, "method": run.group, "role": run.role,
               "attacked": run.attacked, "attacked_from": self.attacked_from, "model_sha256": run.sha256,
               "num_samples": run.result.get("num_samples"), "sampler": f"{sampler.get('name')}-{sampler.get('steps')}"}
        for key, *_ in METRICS:
            row[key] = self.values.get(key)
        for key in DELTA_KEYS:
            row[f"delta_{key}"] = self.deltas.get(key)
        row["relearn_gap"] = self.relearn_gap
        return row


@dataclass
class Scenario:
    id: str
    label: str
    rows: list[Row]
    reference: str | None  # name of the reference run

    def find(self, name: str) -> Row | None:
        return next((row for row in self.rows if row.run.name == name), None)


@dataclass
class Comparison:
    """Every run, grouped by scenario; see the module docstring for the rules."""

    scenarios: list[Scenario]
    warnings: list[str] = field(default_factory=list)

    @property
    def rows(self) -> list[Row]:
        return [row for scenario in self.scenarios for row in scenario.rows]

    @property
    def runs(self) -> list[Run]:
        return [row.run for row in self.rows]

    # ----- renderings

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "scenarios": [{"id": s.id, "label": s.label, "reference": s.reference, "runs": [r.run.name for r in s.rows]}
                          for s in self.scenarios],
            "rows": [row.flat() for row in self.rows],
            "warnings": self.warnings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        rows = [row.flat() for row in self.rows]
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        return buffer.getvalue()

    def to_markdown(self, keys: tuple[str, ...] = TABLE_KEYS) -> str:
        """One GitHub table per scenario (``Δ`` to the reference in parentheses)."""
        parts = []
        for scenario in self.scenarios:
            header = ["run", "method", *[TITLES[k] for k in keys], "relearn gap"]
            lines = [f"**{scenario.label}**" + (f" — reference: `{scenario.reference}`" if scenario.reference else " — no reference (retrain) run"),
                     "", "| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(keys) + 1)) + "|"]
            for row in scenario.rows:
                name = f"**{row.run.name}** (reference)" if row.is_reference and row.run.name == scenario.reference else row.run.name
                cells = [name, row.run.group, *[cell_text(row, k) for k in keys], format_value("relearn_gap", row.relearn_gap, signed=True)]
                lines.append("| " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def format_value(key: str, value: Any, signed: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    decimals = DECIMALS.get(key, 3)
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def cell_text(row: Row, key: str) -> str:
    """``0.412 (+0.401)``: the value and, unless this is the reference, its difference to the reference."""
    text = format_value(key, row.values.get(key))
    delta = row.deltas.get(key)
    if delta is not None and not row.is_reference:
        text += f" ({format_value(key, delta, signed=True)})"
    return text


# --------------------------------------------------------------------------------------------- building


def _group_order() -> dict[str, int]:
    from unlearnctl.methods import available_methods

    order = {"base": 0, "retrain": 1}
    for i, name in enumerate(available_methods()):
        order.setdefault(name, 2 + i)
    return order


def compare(runs: list[Run]) -> Comparison:
    """Group ``runs`` into scenarios, order rows, compute reference differences and relearn gaps."""
    from unlearnctl.errors import require

    require(len(runs) > 0, "nothing to compare")
    order = _group_order()
    by_scenario: dict[tuple, list[Run]] = {}
    for run in runs:
        by_scenario.setdefault(run.scenario, []).append(run)
    scenarios, warnings = [], []
    for number, members in enumerate(by_scenario.values(), start=1):
        scenario_id = f"s{number}"
        label = members[0].scenario_label
        references = [r for r in members if r.role == "reference"]
        reference = references[0] if references else None
        if len(references) > 1:
            warnings.append(f"{label}: several reference runs ({', '.join(r.name for r in references)}); differences use {reference.name}")
        if reference is None and any(r.role in ("unlearned", "attacked") for r in members):
            warnings.append(f"{label}: no reference run (unlearn --method retrain); differences to the reference are not shown")
        samplers = {json.dumps(r.provenance.get("sampler"), sort_keys=True) for r in members}
        if len(samplers) > 1:
            warnings.append(f"{label}: runs were evaluated with different sampler settings or sample counts; compare with care")
        by_sha = {r.sha256: r for r in members if r.sha256}
        ordered = _order(members, order, by_sha)
        rows = []
        for run in ordered:
            values = {key: run.result.get(key) for key, *_ in METRICS}
            deltas = {key: _difference(values.get(key), reference.result.get(key)) if reference else None for key in DELTA_KEYS}
            parent = by_sha.get(run.parent_sha256) if run.attacked else None
            gap = _difference(values.get("forget_rate"), parent.result.get("forget_rate")) if parent else None
            rows.append(Row(run, scenario_id, values, deltas, gap, parent.name if parent else None))
        scenarios.append(Scenario(scenario_id, label, rows, reference.name if reference else None))
    return Comparison(scenarios, warnings)


def _difference(value: Any, reference: Any) -> float | None:
    if isinstance(value, (int, float)) and isinstance(reference, (int, float)) and not isinstance(value, bool):
        return float(value) - float(reference)
    return None


def _order(members: list[Run], order: dict[str, int], by_sha: dict[str, Run]) -> list[Run]:
    """Base, reference, then methods in registry order; each model followed by its attacked versions."""
    roots = [r for r in members if not (r.attacked and r.parent_sha256 in by_sha)]
    roots.sort(key=lambda r: (order.get(r.group, len(order)), r.group, r.role != "reference", members.index(r)))
    ordered: list[Run] = []

    def visit(run: Run) -> None:
        ordered.append(run)
        for child in members:
            if child.attacked and child.parent_sha256 == run.sha256 and child.sha256 != run.sha256 and child not in ordered:
                visit(child)

    for root in roots:
        if root not in ordered:
            visit(root)
    return ordered
