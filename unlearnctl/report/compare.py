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
* **Intervals**: a figure whose evaluation carries ``X_ci95_low``/``X_ci95_high`` (Wilson for rates,
  bootstrap for AUC/FID/KID; docs/metrics.md) is shown as ``0.040 [0.020, 0.080]``. A difference to the
  reference whose interval overlaps the reference's is marked ``≈`` — the data do not separate the two
  (overlap is the conservative reading: non-overlapping 95% intervals always differ significantly,
  overlapping ones may still). Files without interval keys compare as before.
* **Relearning area** (docs/attack.md, "Attack budgets"): every run carrying a relearning curve gets the
  curve's mean forget rate over the attack (:mod:`unlearnctl.attacks.area`) under its attack budget (aux data,
  lr, steps, …), and ``Δ`` = that area − retrain's area **under the same budget** (a retrain curve whose
  budget key is equal); curves of runs that differ only in seeds are averaged (Student-t interval over them).
  One :class:`RelearnRow` per model and budget, so a model attacked at several budgets has several.
* **Seeds**: runs of one scenario that differ only in seeds (every lineage entry has the same command,
  method, forget set and parameters — ``params_digest`` — and the evaluations the same sampler settings,
  but the seeds differ) form an :class:`Aggregate`: the mean of each figure over the seeds and a Student-t
  95% interval over them (``intervals.t_interval``); the tables show it in place of its runs
  (``×N seeds``), the JSON and CSV keep every run and add the aggregates.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from unlearnctl.report.runs import Run

SIMILAR = "≈"  # marks a difference whose 95% interval overlaps the reference's

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
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)  # key -> 95% interval
    overlaps: dict[str, bool | None] = field(default_factory=dict)  # key -> interval overlaps the reference's

    @property
    def is_reference(self) -> bool:
        return self.run.role == "reference"

    @property
    def label(self) -> str:
        return self.run.name

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
        for key, *_ in METRICS:
            low, high = self.intervals.get(key) or (None, None)
            row[f"{key}_ci95_low"], row[f"{key}_ci95_high"] = low, high
            row[f"similar_{key}"] = self.overlaps.get(key)
        return row


@dataclass
class Aggregate:
    """Runs of one scenario that differ only in seeds: per figure the mean and a t-interval over the seeds."""

    scenario: str
    group: str  # method (as Row.run.group)
    role: str
    attacked: bool
    runs: list[str]  # names of the runs aggregated
    values: dict[str, float | None]  # key -> mean over the seeds that measured it
    intervals: dict[str, tuple[float, float] | None]  # key -> Student-t 95% interval over seeds
    counts: dict[str, int]  # key -> number of seeds that measured it
    deltas: dict[str, float | None] = field(default_factory=dict)
    overlaps: dict[str, bool | None] = field(default_factory=dict)
    relearn_gap: float | None = None

    @property
    def is_reference(self) -> bool:
        return self.role == "reference"

    @property
    def label(self) -> str:
        return f"{self.group}{' ↺' if self.attacked else ''} ×{len(self.runs)} seeds"

    def flat(self) -> dict[str, Any]:
        row = {"label": self.label, "scenario": self.scenario, "method": self.group, "role": self.role,
               "attacked": self.attacked, "runs": list(self.runs), "num_seeds": len(self.runs)}
        for key, *_ in METRICS:
            low, high = self.intervals.get(key) or (None, None)
            row[key], row[f"{key}_ci95_low"], row[f"{key}_ci95_high"] = self.values.get(key), low, high
            row[f"{key}_num_seeds"] = self.counts.get(key, 0)
            if key in DELTA_KEYS:
                row[f"delta_{key}"], row[f"similar_{key}"] = self.deltas.get(key), self.overlaps.get(key)
        return row


@dataclass
class RelearnRow:
    """One model (or its seeds) under one attack budget: relearning area, retrain's under the same budget, the difference.

    ``interval`` is the area's envelope of per-point Wilson bounds (one curve) or the Student-t 95% interval over
    seeds (several); ``delta_interval`` = ``(low − reference high, high − reference low)``, conservative; ``similar``:
    the two intervals overlap.
    """

    scenario: str
    label: str  # the model attacked (its run name, or "method ×N seeds")
    group: str  # method
    budget: dict[str, Any]
    runs: list[str]  # runs whose curves are averaged
    area: float | None
    interval: tuple[float, float] | None
    interval_kind: str  # "envelope" (one curve), "t over seeds" or "none"
    reference_area: float | None = None
    reference_interval: tuple[float, float] | None = None
    delta: float | None = None
    delta_interval: tuple[float, float] | None = None
    similar: bool | None = None

    @property
    def is_reference(self) -> bool:
        return self.group == "retrain"

    @property
    def budget_label(self) -> str:
        from unlearnctl.attacks.area import budget_label

        return budget_label(self.budget)

    def flat(self) -> dict[str, Any]:
        low, high = self.interval or (None, None)
        ref_low, ref_high = self.reference_interval or (None, None)
        delta_low, delta_high = self.delta_interval or (None, None)
        return {"label": self.label, "scenario": self.scenario, "method": self.group, "budget": self.budget,
                "budget_label": self.budget_label, "runs": list(self.runs), "relearn_area": self.area,
                "relearn_area_ci95_low": low, "relearn_area_ci95_high": high, "relearn_area_interval": self.interval_kind,
                "reference_relearn_area": self.reference_area, "reference_relearn_area_ci95_low": ref_low,
                "reference_relearn_area_ci95_high": ref_high, "delta_relearn_area": self.delta,
                "delta_relearn_area_ci95_low": delta_low, "delta_relearn_area_ci95_high": delta_high,
                "similar_relearn_area": self.similar}


@dataclass
class Scenario:
    id: str
    label: str
    rows: list[Row]
    reference: str | None  # name of the reference run
    aggregates: list[Aggregate] = field(default_factory=list)
    relearning: list[RelearnRow] = field(default_factory=list)

    @property
    def reference_label(self) -> str | None:
        """The reference as the tables show it: its seed aggregate's label when it has one."""
        aggregate = next((a for a in self.aggregates if self.reference in a.runs), None)
        return aggregate.label if aggregate is not None else self.reference

    def find(self, name: str) -> Row | None:
        return next((row for row in self.rows if row.run.name == name), None)

    def display_rows(self) -> list["Row | Aggregate"]:
        """The table's rows: every run, except that the runs of an aggregate give way to it (at the first one's place)."""
        members = {name: aggregate for aggregate in self.aggregates for name in aggregate.runs}
        shown: list[Row | Aggregate] = []
        for row in self.rows:
            aggregate = members.get(row.run.name)
            if aggregate is None:
                shown.append(row)
            elif aggregate not in shown:
                shown.append(aggregate)
        return shown


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
            "aggregates": [a.flat() for s in self.scenarios for a in s.aggregates],
            "relearning": [r.flat() for s in self.scenarios for r in s.relearning],
            "warnings": self.warnings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        """One row per run, then one per seed aggregate (``run`` = its label, ``runs`` its runs, ``num_seeds`` set)."""
        buffer = io.StringIO()
        rows = [{**row.flat(), "num_seeds": 1, "runs": row.run.name} for row in self.rows]
        for scenario in self.scenarios:
            for aggregate in scenario.aggregates:
                flat = aggregate.flat()
                rows.append({**flat, "run": flat.pop("label"), "runs": " ".join(flat["runs"])})
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n", extrasaction="ignore", restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        return buffer.getvalue()

    def to_markdown(self, keys: tuple[str, ...] = TABLE_KEYS) -> str:
        """One GitHub table per scenario (``Δ`` to the reference in parentheses)."""
        parts = []
        for scenario in self.scenarios:
            header = ["run", "method", *[TITLES[k] for k in keys], "relearn gap"]
            lines = [f"**{scenario.label}**" + (f" — reference: `{scenario.reference_label}`" if scenario.reference else " — no reference (retrain) run"),
                     "", "| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(keys) + 1)) + "|"]
            for row in scenario.display_rows():
                reference = row.is_reference and (row.label == scenario.reference or scenario.reference in getattr(row, "runs", ()))
                name = f"**{row.label}** (reference)" if reference else row.label
                cells = [name, row.group if isinstance(row, Aggregate) else row.run.group, *[cell_text(row, k) for k in keys],
                         format_value("relearn_gap", row.relearn_gap, signed=True)]
                lines.append("| " + " | ".join(cells) + " |")
            if scenario.relearning:
                lines += ["", RELEARN_TITLE, "", "| model | attack budget | relearning area | retrain's | Δ |", "|---|---|---:|---:|---:|"]
                lines += ["| " + " | ".join(relearn_cells(row)) + " |" for row in scenario.relearning]
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"


RELEARN_TITLE = ("Relearning area: mean forget rate over the attack (trapezoid over the curve); Δ = − retrain's under the "
                 "same attack budget; [95% envelope of the points' Wilson intervals, or t-interval over seeds]")


def relearn_cells(row: RelearnRow) -> list[str]:
    """``model, budget, area [interval], retrain's area, Δ [interval]`` as text (``≈`` when the intervals overlap)."""

    def with_interval(value, interval) -> str:
        text = format_value("relearn_gap", value)
        return text + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval is not None and value is not None else "")

    name = f"{row.label} (reference)" if row.is_reference else row.label
    delta = "—" if row.delta is None else (f"{SIMILAR} " if row.similar else "") + format_value("relearn_gap", row.delta, signed=True) \
        + (f" [{row.delta_interval[0]:+.3f}, {row.delta_interval[1]:+.3f}]" if row.delta_interval else "")
    return [name, row.budget_label, with_interval(row.area, row.interval),
            with_interval(row.reference_area, row.reference_interval), delta]


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


def cell_text(row: "Row | Aggregate", key: str) -> str:
    """``0.412 [0.380, 0.445] (+0.401)``: the value, its 95% interval when known and, unless this is the
    reference, its difference to the reference — ``≈`` before it when the two intervals overlap."""
    text = format_value(key, row.values.get(key))
    interval = row.intervals.get(key)
    if interval is not None:
        text += f" [{format_value(key, interval[0])}, {format_value(key, interval[1])}]"
    delta = row.deltas.get(key)
    if delta is not None and not row.is_reference:
        marker = f"{SIMILAR} " if row.overlaps.get(key) else ""
        text += f" ({marker}{format_value(key, delta, signed=True)})"
    return text


def row_intervals(result: dict[str, Any]) -> dict[str, tuple[float, float] | None]:
    """``key -> (low, high)`` from an evaluation's ``X_ci95_low``/``X_ci95_high`` keys (``None`` when absent)."""
    out = {}
    for key, *_ in METRICS:
        low, high = result.get(f"{key}_ci95_low"), result.get(f"{key}_ci95_high")
        out[key] = (float(low), float(high)) if _number(low) and _number(high) else None
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool | None:
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


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
            intervals = row_intervals(run.result)
            overlaps = {key: _overlap(intervals[key], row_intervals(reference.result)[key]) if reference else None for key in DELTA_KEYS}
            rows.append(Row(run, scenario_id, values, deltas, gap, parent.name if parent else None, intervals, overlaps))
        scenario = Scenario(scenario_id, label, rows, reference.name if reference else None)
        scenario.aggregates = aggregate_seeds(scenario)
        scenario.relearning = relearning_rows(scenario)
        seeds_of_reference = [a for a in scenario.aggregates if {r.name for r in references} <= set(a.runs)]
        if len(references) > 1 and not seeds_of_reference:
            warnings.append(f"{label}: several reference runs ({', '.join(r.name for r in references)}); differences use {reference.name}")
        scenarios.append(scenario)
    return Comparison(scenarios, warnings)


def seed_free_key(run: Run) -> str | None:
    """What runs differing only in seeds share (``None`` when the evaluation records no ``params_digest``)."""
    lineage = run.lineage
    if not lineage or any("params_digest" not in entry for entry in lineage):
        return None
    entries = [(e.get("command"), e.get("method"), e.get("forget"), e.get("params_digest")) for e in lineage]
    sampler = {k: v for k, v in (run.provenance.get("sampler") or {}).items() if k not in ("seed", "batch_size")}
    return json.dumps([run.role, run.group, entries, sampler], sort_keys=True, default=str)


def _seeds(run: Run) -> tuple:
    return (*[entry.get("seed") for entry in run.lineage], (run.provenance.get("sampler") or {}).get("seed"))


def aggregate_seeds(scenario: Scenario) -> list[Aggregate]:
    """Group the scenario's runs that differ only in seeds; per figure the mean and a t-interval over seeds."""
    from unlearnctl.metrics.intervals import t_interval

    groups: dict[str, list[Row]] = {}
    for row in scenario.rows:
        key = seed_free_key(row.run)
        if key is not None:
            groups.setdefault(key, []).append(row)
    aggregates = []
    for rows in groups.values():
        if len(rows) < 2 or len({_seeds(r.run) for r in rows}) < len(rows):  # the same seeds twice: not seeds
            continue
        values, intervals, counts = {}, {}, {}
        for key, *_ in METRICS:
            measured = [float(r.values[key]) for r in rows if _number(r.values.get(key))]
            counts[key] = len(measured)
            if len(measured) >= 2:
                values[key], low, high = t_interval(measured)
                intervals[key] = (low, high)
            else:
                values[key], intervals[key] = (measured[0] if measured else None), None
        gaps = [r.relearn_gap for r in rows if r.relearn_gap is not None]
        first = rows[0].run
        aggregates.append(Aggregate(scenario.id, first.group, first.role, first.attacked, [r.run.name for r in rows],
                                    values, intervals, counts, relearn_gap=sum(gaps) / len(gaps) if gaps else None))
    # differences: to the reference aggregate when the reference run is in one, else to the reference run
    reference_row = scenario.find(scenario.reference) if scenario.reference else None
    reference = next((a for a in aggregates if scenario.reference in a.runs), reference_row)
    for aggregate in aggregates:
        for key in DELTA_KEYS:
            ref_value = reference.values.get(key) if reference is not None else None
            ref_interval = reference.intervals.get(key) if reference is not None else None
            aggregate.deltas[key] = _difference(aggregate.values.get(key), ref_value)
            aggregate.overlaps[key] = _overlap(aggregate.intervals.get(key), ref_interval)
    return aggregates


def relearning_rows(scenario: Scenario) -> list[RelearnRow]:
    """One :class:`RelearnRow` per model (seeds averaged) and attack budget, with retrain's area under the same budget."""
    from unlearnctl.attacks.area import attack_budget, budget_key, relearn_area
    from unlearnctl.metrics.intervals import t_interval

    groups: dict[tuple[str, str], list[tuple[Row, dict[str, Any]]]] = {}
    seen: set[int] = set()
    for row in scenario.rows:
        curve = row.run.curve
        if not curve or not curve.get("points") or id(curve) in seen:
            continue
        seen.add(id(curve))
        budget = attack_budget(curve)
        groups.setdefault((seed_free_key(row.run) or row.run.name, budget_key(budget)), []).append((row, budget))
    out = []
    for (_, key), members in groups.items():
        areas = [relearn_area(row.run.curve["points"]) for row, _ in members]
        values = [a["relearn_area"] for a in areas if a["relearn_area"] is not None]
        first = members[0][0]
        if len(members) == 1:
            a = areas[0]
            label = first.attacked_from or first.run.name
            interval = (a["relearn_area_ci95_low"], a["relearn_area_ci95_high"]) if a["relearn_area_ci95_low"] is not None else None
            area, kind = a["relearn_area"], "envelope" if interval else "none"
        else:
            label = f"{first.run.group} ×{len(members)} seeds"
            area, interval, kind = (values[0] if values else None), None, "none"
            if len(values) >= 2:
                area, low, high = t_interval(values)
                interval, kind = (low, high), "t over seeds"
        out.append(RelearnRow(scenario.id, label, first.run.group, members[0][1], [row.run.name for row, _ in members],
                              area, interval, kind))
    references = {budget_key(r.budget): r for r in out if r.is_reference}
    for row in out:
        reference = references.get(budget_key(row.budget))
        if reference is None or row is reference:
            continue
        row.reference_area, row.reference_interval = reference.area, reference.interval
        row.delta = _difference(row.area, reference.area)
        if row.interval is not None and reference.interval is not None:
            row.delta_interval = (row.interval[0] - reference.interval[1], row.interval[1] - reference.interval[0])
            row.similar = _overlap(row.interval, reference.interval)
    order = {key: i for i, key in enumerate(dict.fromkeys(budget_key(r.budget) for r in out))}
    return sorted(out, key=lambda r: (order[budget_key(r.budget)], not r.is_reference))  # per budget: retrain first


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
