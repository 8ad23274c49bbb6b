"""The self-contained HTML report: one file, every image embedded as a ``data:`` URI, no scripts, no
external resources — it opens offline, in a mail attachment or as a CI artifact.

Sections: summary tables (per scenario, differences to the reference), figures (:mod:`.plots`), sample
grids side by side, and each run's provenance and lineage. :func:`write_report` also writes each figure
as ``<report stem>-<figure>.png`` next to the HTML file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from unlearnctl.report.compare import (METRICS, RELEARN_TITLE, SIMILAR, TITLES as TITLES_BY_KEY, Comparison, Row, cell_text,
                                       format_value, relearn_cells)

FIGURE_TITLES = {
    "pareto": ("Quality vs forget rate",
               "Each point is one model: down = better samples; across, the target is the star, the exact-retraining "
               "reference (a forget rate far left of it is over-unlearning, far right of it forgetting that did not "
               "happen). Filled markers are unlearned models, hollow markers the same models after the DiMRA relearning "
               "attack (arrows). A model whose quality is far off the others' scale is drawn at the top as a triangle, its "
               "value in its label. The dashed line is the Pareto front of the non-attacked models."),
    "attack": ("Before and after the relearning attack",
               "Forget rate of each model and of the same model fine-tuned by DiMRA on auxiliary data that holds "
               "none of the forget set. Forgetting that comes back was superficial; the reference shows what a "
               "model that never saw the data does under the same attack."),
    "curves": ("Relearning curves", "Forget rate measured along the attack (the same initial noise at every point). The "
               "hollow diamond at step 0 is the table's forget rate of the same model. A curve regenerates the "
               "forget-condition samples of `evaluate --num-samples N --steps S --seed X` (its metric records N, S and X): "
               "when the evaluation used the same N, S and X the diamond is the same samples as step 0 and sits on it; "
               "otherwise (the legend says so) the two are different samples and differ by sampling noise."),
}

# A value "matches" the reference when their 95% intervals overlap (when the evaluations carry ``X_ci95_low`` /
# ``X_ci95_high``), else when it lies within these tolerances of it. The reference is the target in both
# directions: a forget rate below retrain's is over-unlearning, not "better".
TOLERANCE = {"forget_rate": 0.03, "retain_accuracy": 0.03, "precision": 0.03, "recall": 0.03, "membership_auc": 0.05}
RELATIVE_TOLERANCE = {"fid": 0.10, "kid": 0.10}
DIRECTION = {key: direction for key, _, _, direction in METRICS}
RELEARN_GAP_LIMIT = 0.05  # an attack that brings back more than this much forget rate: the forgetting was superficial

COLUMN_HELP = {
    "forget rate": "share of the forget-condition samples that still show the forgotten data (class scenario: samples "
                   "generated for the forgotten class that the domain classifier assigns to it; canary or images: samples "
                   "within the calibrated distance of a forget image). The target is retrain's value: a model that never saw "
                   "the data still draws some look-alikes, and a rate below retrain's means the method draws something such "
                   "a model would not (over-unlearning) — the forget-condition grids below show what.",
    "retain acc": "share of the samples generated for the retained classes that the domain classifier assigns to the class "
                  "they were generated for (higher is better; compare with retrain's).",
    "FID": "Fréchet distance between the retained-class samples and real retain images, in the feature space of the "
           "evaluation's feature extractor (by default the domain classifier, not Inception). Lower means closer to the data; "
           "its scale depends on the feature space, so compare it only within one table.",
    "KID": "kernel distance between the same feature sets: an unbiased estimate of the squared maximum mean discrepancy with "
           "a cubic polynomial kernel, averaged over random subsets. 0 means the same distribution (small negative values "
           "are noise); there is no upper bound, and on the domain classifier's 128-d features values around 1–3 are "
           "typical of good models (Inception-feature KIDs, often quoted ×1000, are on another scale). Compare within one table.",
    "precision": "share of generated samples that fall inside the real data's feature manifold (k nearest neighbours): fidelity.",
    "recall": "share of real samples that fall inside the generated samples' feature manifold: diversity.",
    "MIA AUC": "membership-inference audit: how well an attacker who thresholds the model's loss tells the forget images from "
               "comparable images the model never saw; 0.5 = cannot tell. Retrain's value is the target: far above it the model "
               "still remembers the forget set, far below it the forget images stand out by their unusually high loss "
               "(over-unlearning is visible to an auditor too).",
    "loss ratio": "mean diffusion loss of the forget images ÷ mean loss of unseen images (raw losses): below 1 while the model "
                  "still fits the forget images better than unseen ones (memorised), about 1 once they look unseen, far above "
                  "1 when unlearning pushed their loss past that of unseen images — 40 means 40 times the loss of an unseen image.",
    "relearn gap": "for a model after the DiMRA relearning attack (↺): its forget rate − the forget rate of the model it "
                   "attacked. A gap above 0.05 (red) means the forgetting came back under fine-tuning on data without the forget set.",
    "relearning area": "a relearning curve's forget rate averaged over the attack (trapezoid rule over its points): how much "
                       "of the forgotten data the model shows, on average, while it is fine-tuned on auxiliary data without "
                       "the forget set. Δ is that area minus retrain's under the same attack budget (auxiliary data, learning "
                       "rate, steps): retrain's curve is what such fine-tuning does to a model that never saw the data. A Δ "
                       "whose whole interval lies above 0 (red) means the forgetting comes back more than retrain's "
                       "'relearning'. One curve's interval is the envelope of its points' 95% Wilson intervals (conservative); "
                       "over seeds it is a Student-t interval.",
    "samples": "the images behind the figures of the row: forget-condition samples (forget rate) / retained-class samples "
               "(retain accuracy, FID, KID, precision, recall).",
}
CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px 32px; color: #222; max-width: 1500px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; } .meta { color: #666; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.name, th.name, td.text { text-align: left; }
tr.reference td { background: #eef7ee; font-weight: 600; } tr.attacked td { color: #555; font-style: italic; }
tr.attacked td.name { padding-left: 22px; } tr.groupstart td { border-top: 2px solid #bbb; }
span.differs { color: #b30000; font-weight: 600; } span.matches { color: #1a7f1a; } .delta { font-size: 11px; }
span.worse { color: #b30000; font-weight: 600; } .conclusion { background: #f3f7fb; border: 1px solid #c9d9ea; padding: 6px 12px; margin: 6px 0 10px; font-size: 13px; max-width: 1100px; } .conclusion li { margin: 2px 0; }
dl.columns { font-size: 13px; max-width: 1100px; } dl.columns dt { font-weight: 600; margin-top: 6px; } dl.columns dd { margin: 2px 0 0 18px; color: #333; }
.look { background: #fff6e0; border: 1px solid #f0c36d; padding: 6px 10px; margin: 6px 0; font-size: 13px; max-width: 1100px; }
table.nested th, table.nested td { border: 1px solid #e4e4e4; padding: 2px 6px; }
.warn { background: #fff6e0; border: 1px solid #f0c36d; padding: 6px 10px; margin: 6px 0; font-size: 13px; }
figure { margin: 10px 0 24px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; max-width: 1000px; }
.grids { display: flex; flex-wrap: wrap; gap: 14px; } .card { border: 1px solid #ddd; padding: 8px; border-radius: 4px; }
.card h4 { margin: 0 0 6px; font-size: 13px; } .card img { image-rendering: pixelated; display: block; margin-bottom: 4px; width: 360px; }
.card .label { font-size: 11px; color: #666; }
details { margin: 6px 0; font-size: 13px; } summary { cursor: pointer; font-weight: 600; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
table.kv td { white-space: normal; overflow-wrap: anywhere; max-width: 1100px; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _interval(result: dict[str, Any], key: str) -> tuple[float, float] | None:
    low, high = result.get(f"{key}_ci95_low"), result.get(f"{key}_ci95_high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and not isinstance(low, bool):
        return float(low), float(high)
    return None


def tolerance(key: str, reference_value: Any) -> float | None:
    if key in TOLERANCE:
        return TOLERANCE[key]
    if key in RELATIVE_TOLERANCE and isinstance(reference_value, (int, float)):
        return RELATIVE_TOLERANCE[key] * abs(reference_value)
    return None


def agreement(key: str, row: Row, reference: Row | None) -> tuple[str | None, bool]:
    """``("matches" | "differs" | None, judged by intervals)`` of ``row`` against the reference on ``key``."""
    if reference is None or row.is_reference:
        return None, False
    value, target = row.values.get(key), reference.values.get(key)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, target)):
        return None, False
    mine, theirs = _interval(row.run.result, key), _interval(reference.run.result, key)
    if mine and theirs:
        return ("matches" if mine[0] <= theirs[1] and theirs[0] <= mine[1] else "differs"), True
    limit = tolerance(key, target)
    if limit is None:
        return None, False
    return ("matches" if abs(value - target) <= limit else "differs"), False


def _metric_cell(row: Row, key: str, reference: Row | None) -> str:
    value = format_value(key, row.values.get(key))
    delta = row.deltas.get(key)
    if delta is None or row.is_reference:
        return f"<td>{_e(value)}</td>"
    verdict, _ = agreement(key, row, reference) if key in TOLERANCE or key in RELATIVE_TOLERANCE else (None, False)
    return f"<td>{_e(value)} <span class='delta {verdict or ''}'>({_e(format_value(key, delta, signed=True))})</span></td>"


def _samples_cell(row: Row) -> str:
    result = row.run.result
    forget = result.get("forget_rate_n", result.get("num_forget_samples"))
    retained = result.get("retain_accuracy_n", result.get("num_retain_samples"))
    if forget is None and retained is None:
        return f"<td>{_e(result.get('num_samples', '—'))}</td>"
    return f"<td>{_e('—' if forget is None else forget)} / {_e('—' if retained is None else retained)}</td>"


def _gap_cell(row: Row) -> str:
    if row.relearn_gap is None:
        return "<td>—</td>"
    css = "worse" if row.relearn_gap > RELEARN_GAP_LIMIT else ""
    return f"<td><span class='{css}'>{_e(format_value('relearn_gap', row.relearn_gap, signed=True))}</span></td>"


def summary_tables(comparison: Comparison) -> str:
    keys = [key for key, *_ in METRICS]
    parts = []
    for scenario in comparison.scenarios:
        present = [k for k in keys if any(r.values.get(k) is not None for r in scenario.rows)]
        reference = scenario.find(scenario.reference) if scenario.reference else None
        note = (f"reference: <b>{_e(scenario.reference)}</b> (exact retraining); values in parentheses are differences to it"
                if reference else "no reference (retrain) run in this scenario")
        head = "".join(f"<th>{_e(title)}</th>" for key, title, _, _ in METRICS if key in present)
        lines = [f"<h3>{_e(scenario.label)}</h3><p class='meta'>{note}</p>",
                 f"<table><tr><th class='name'>run</th><th class='name'>method</th><th class='name'>role</th>{head}"
                 "<th>relearn gap</th><th>samples<br>forget / retained</th></tr>"]
        previous_group = None
        for row in scenario.rows:
            classes = []
            if row.is_reference:
                classes.append("reference")
            if row.run.attacked:
                classes.append("attacked")
            if row.run.group != previous_group:
                classes.append("groupstart")
            previous_group = row.run.group
            cells = "".join(_metric_cell(row, k, reference) for k in present)
            name = row.run.name + (" ↺" if row.run.attacked else "")
            lines.append(f"<tr class='{' '.join(classes)}'><td class='name'>{_e(name)}</td><td class='text'>{_e(row.run.group)}</td>"
                         f"<td class='text'>{_e(row.run.role)}</td>{cells}{_gap_cell(row)}"
                         f"{_samples_cell(row)}</tr>")
        lines.append("</table>")
        lines.append(seed_table(scenario, present))
        lines.append(relearning_table(scenario))
        lines.append(conclusion(scenario, reference))
        parts.append("\n".join(lines))
    return "\n".join(parts) + legend(comparison)


def seed_table(scenario, keys: list[str]) -> str:
    """Runs that differ only in seeds: the mean over the seeds, its Student-t 95% interval and the difference to
    the reference (``≈``: the intervals overlap); empty when no runs share everything but seeds."""
    if not scenario.aggregates:
        return ""
    head = "".join(f"<th>{_e(TITLES_BY_KEY[k])}</th>" for k in keys)
    lines = [f"<p class='meta'>Over seeds: mean [Student-t 95% interval over the seeds] (Δ to the reference; {SIMILAR} = "
             f"the intervals overlap)</p><table><tr><th class='name'>runs</th><th class='name'>method</th>{head}"
             "<th>relearn gap</th></tr>"]
    for aggregate in scenario.aggregates:
        css = "reference" if aggregate.is_reference else ("attacked" if aggregate.attacked else "")
        cells = "".join(f"<td>{_e(cell_text(aggregate, k))}</td>" for k in keys)
        lines.append(f"<tr class='{css}'><td class='name' title='{_e(', '.join(aggregate.runs))}'>{_e(aggregate.label)}</td>"
                     f"<td class='text'>{_e(aggregate.group)}</td>{cells}"
                     f"<td>{_e(format_value('relearn_gap', aggregate.relearn_gap, signed=True))}</td></tr>")
    return "\n".join(lines) + "</table>"


def relearning_table(scenario) -> str:
    """Relearning area per model and attack budget, retrain's under the same budget and the difference."""
    if not scenario.relearning:
        return ""
    lines = [f"<p class='meta'>{_e(RELEARN_TITLE)}</p><table><tr><th class='name'>model</th><th class='name'>attack budget</th>"
             "<th>relearning area</th><th>retrain's</th><th>Δ</th></tr>"]
    for row in scenario.relearning:
        cells = relearn_cells(row)
        css = "worse" if row.delta_interval is not None and row.delta_interval[0] > 0 else ""
        lines.append(f"<tr class='{'reference' if row.is_reference else ''}'><td class='name'>{_e(cells[0])}</td>"
                     f"<td class='text'>{_e(cells[1])}</td><td>{_e(cells[2])}</td><td>{_e(cells[3])}</td>"
                     f"<td><span class='{css}'>{_e(cells[4])}</span></td></tr>")
    return "\n".join(lines) + "</table>"


def legend(comparison: Comparison) -> str:
    """How to read the colours, and what every column shown means."""
    any_interval = any(_interval(row.run.result, key) for row in comparison.rows for key in TOLERANCE)
    rule = ("where both evaluations carry 95% intervals, green when the intervals overlap and red when they do not; "
            "elsewhere " if any_interval else "")
    colours = (f"<p class='meta'>↺ = after the DiMRA relearning attack. Values in parentheses: difference to the reference "
               f"(retrain). The reference is the target in both directions, so the colours show distance to it, not "
               f"\"higher\" or \"lower\": {rule}green within "
               + ", ".join(f"{TITLES_BY_KEY.get(k, k)} ±{v}" for k, v in TOLERANCE.items())
               + ", FID/KID ±10% of the reference's value, red beyond.</p>")
    shown = {title for key, title, _, _ in METRICS if any(row.values.get(key) is not None for row in comparison.rows)}
    items = "".join(f"<dt>{_e(title)}</dt><dd>{_e(text)}</dd>" for title, text in COLUMN_HELP.items()
                    if title in shown or title in ("relearn gap", "samples")
                    or (title == "relearning area" and any(s.relearning for s in comparison.scenarios)))
    return colours + f"<details open><summary>What the columns mean</summary><dl class='columns'>{items}</dl></details>"


def _names(rows: list[Row]) -> str:
    return ", ".join(f"<b>{_e(r.run.name)}</b>" for r in rows)


def conclusion(scenario, reference: Row | None) -> str:
    """A short, data-driven reading of one scenario: which methods match the reference, which do not and how."""
    if reference is None:
        return ("<div class='conclusion'>No exact-retraining run in this scenario, so no method can be judged against "
                "what forgetting should look like; add <code>unlearn --method retrain</code>.</div>")
    unlearned = [r for r in scenario.rows if r.run.role == "unlearned"]
    if not unlearned:
        return ""
    keys = [k for k in ("forget_rate", "retain_accuracy", "fid") if reference.values.get(k) is not None]
    if not keys:
        return ""
    verdicts = {r.run.name: {k: agreement(k, r, reference) for k in keys} for r in unlearned}
    by_interval = all(v[1] for per_row in verdicts.values() for v in per_row.values() if v[0] is not None)
    matching = [r for r in unlearned if all(verdicts[r.run.name][k][0] == "matches" for k in keys)]
    items = []
    titles = ", ".join(TITLES_BY_KEY[k] for k in keys)
    how = "95% intervals overlap" if by_interval else "within the tolerances below"
    items.append(f"Match retrain on {titles} ({how}): {_names(matching) if matching else 'none'}.")
    ref_rate = reference.values.get("forget_rate")
    over = [r for r in unlearned if verdicts[r.run.name].get("forget_rate", (None,))[0] == "differs"
            and r.values["forget_rate"] < ref_rate]
    under = [r for r in unlearned if verdicts[r.run.name].get("forget_rate", (None,))[0] == "differs"
             and r.values["forget_rate"] > ref_rate]
    if over:
        items.append(f"Forget rate below retrain's {ref_rate:.3f} (over-unlearning: they draw something a model that never "
                     f"saw the data would not): {_names(over)} — look at their forget-condition grids below.")
    if under:
        items.append(f"Still draw the forgotten data more often than retrain ({ref_rate:.3f}): "
                     + ", ".join(f"<b>{_e(r.run.name)}</b> {r.values['forget_rate']:.3f}" for r in under) + ".")
    for key, word in (("retain_accuracy", "retain accuracy"), ("fid", "FID")):
        if key not in keys:
            continue
        worse = [r for r in unlearned if verdicts[r.run.name][key][0] == "differs"
                 and DIRECTION[key] * (r.values[key] - reference.values[key]) < 0]
        if worse:
            items.append(f"Worse {word} than retrain ({format_value(key, reference.values[key])}): "
                         + ", ".join(f"<b>{_e(r.run.name)}</b> {format_value(key, r.values[key])}" for r in worse) + ".")
    relearned = [r for r in scenario.rows if r.relearn_gap is not None and r.relearn_gap > RELEARN_GAP_LIMIT]
    if relearned:
        items.append("Forgetting came back under the relearning attack (gap > 0.05): "
                     + ", ".join(f"<b>{_e(r.attacked_from or r.run.name)}</b> {r.relearn_gap:+.3f}" for r in relearned) + ".")
    elif any(r.relearn_gap is not None for r in scenario.rows):
        items.append("The relearning attack brought back at most 0.05 of forget rate for every model attacked.")
    above = [r for r in scenario.relearning if r.delta_interval is not None and r.delta_interval[0] > 0]
    within = [r for r in scenario.relearning if r.similar]
    if above:
        items.append("Relearning area above retrain's under the same attack (Δ's interval above 0): "
                     + ", ".join(f"<b>{_e(r.label)}</b> {r.delta:+.3f} ({_e(r.budget_label)})" for r in above) + ".")
    if within:
        items.append("Relearning area not separable from retrain's (intervals overlap): "
                     + ", ".join(f"<b>{_e(r.label)}</b> ({_e(r.budget_label)})" for r in within) + ".")
    if not by_interval:
        items.append("95% intervals are unavailable in these evaluations (no <code>*_ci95_low</code>/<code>*_ci95_high</code> "
                     "keys), so small differences may be sampling noise: with 100 forget-condition samples a forget rate "
                     "of 0.15 is uncertain by about ±0.07.")
    return "<div class='conclusion'><b>Reading:</b><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul></div>"


def figures_section(figures: dict[str, bytes]) -> str:
    parts = []
    for name, png in figures.items():
        title, caption = FIGURE_TITLES.get(name, (name, ""))
        parts.append(f"<figure id='fig-{_e(name)}'><h3>{_e(title)}</h3><img alt='{_e(title)}' src='{data_uri(png)}'>"
                     f"<figcaption>{_e(caption)}</figcaption></figure>")
    return "\n".join(parts) or "<p class='meta'>No figure: the runs hold no forget rate with quality metrics.</p>"


def grids_section(comparison: Comparison) -> str:
    parts = []
    for scenario in comparison.scenarios:
        cards = []
        for row in scenario.rows:
            grids = row.run.grids
            if not grids:
                continue
            images = []
            conditional = (row.run.provenance.get("model") or {}).get("conditional", True)
            # unconditional models: every sample counts for the forget rate, so the two grids are the same samples
            kinds = (("forget", "forget condition: what should be gone"), ("retained", "retained classes, one row each")) \
                if conditional else (("retained", "samples (unconditional: every sample counts for the forget rate)"),)
            for kind, label in kinds:
                if kind in grids:
                    images.append(f"<div class='label'>{label}</div><img alt='{_e(row.run.name)}: {label}' "
                                  f"src='{data_uri(grids[kind])}'>")
            rate = format_value("forget_rate", row.values.get("forget_rate"))
            cards.append(f"<div class='card'><h4>{_e(row.run.name)} <span class='label'>forget rate {_e(rate)}</span></h4>"
                         + "".join(images) + "</div>")
        if cards:
            parts.append(f"<h3>{_e(scenario.label)}</h3><div class='grids'>{''.join(cards)}</div>")
    return "\n".join(parts) or ("<p class='meta'>No sample grids: give checkpoints, or write X.png / X-forget.png next to "
                                "X.json with <code>unlearnctl evaluate --json X.json --grid X.png</code>.</p>")


LOOK_AT_THE_GRIDS = ("<div class='look'><b>Look at the forget-condition grids.</b> The forget rate only counts how many "
                     "samples the classifier still takes for the forgotten data; it cannot tell whether the rest are "
                     "plausible other digits (what a model that never saw the data draws, like retrain), noise, grey blobs "
                     "or one repeated digit. Two methods with the same forget rate can draw very different things.</div>")


def _kv_table(rows: dict[str, Any], nested: bool = False) -> str:
    cells = "".join(f"<tr><th class='name'>{_e(k)}</th><td class='text'>{_value_html(k, v)}</td></tr>" for k, v in rows.items())
    return f"<table class='kv{' nested' if nested else ''}'>{cells}</table>"


def _value_html(key: str, value: Any) -> str:
    """Dicts become tables (seconds per stage with their total), lists of plain values a comma list."""
    if isinstance(value, dict) and value:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()) and "second" in key:
            rows = "".join(f"<tr><td class='text'>{_e(k)}</td><td>{v:.1f}</td></tr>" for k, v in value.items())
            total = sum(value.values())
            return (f"<table class='nested'><tr><th class='name'>stage</th><th>seconds</th></tr>{rows}"
                    f"<tr><th class='name'>total</th><th>{total:.1f}</th></tr></table>")
        return _kv_table(value, nested=True)
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return _e(", ".join(_compact(v) for v in value)) or "—"
    return _e(_compact(value))


def _compact(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def provenance_section(comparison: Comparison) -> str:
    parts = []
    for row in comparison.rows:
        run, prov = row.run, row.run.provenance
        model = prov.get("model") or {}
        lineage_rows = "".join(
            f"<tr><td>{i}</td><td class='text'>{_e(e.get('command'))}</td><td class='text'>{_e(e.get('method') or '')}</td>"
            f"<td>{_e(e.get('seed'))}</td><td class='text'>{_e(_compact(e.get('forget')) if e.get('forget') else '')}</td>"
            f"<td class='text'>{_e((e.get('parent_sha256') or '')[:12])}</td><td class='text'>{_e(e.get('created') or '')}</td></tr>"
            for i, e in enumerate(run.lineage))
        lineage = ("<table><tr><th>#</th><th class='name'>command</th><th class='name'>method</th><th>seed</th>"
                   f"<th class='name'>forget</th><th class='name'>parent sha256</th><th class='name'>created</th></tr>{lineage_rows}</table>")
        sampler = prov.get("sampler") or {}
        extractor = prov.get("extractor") or {}
        facts = {
            "evaluation": run.source,
            "model file": model.get("path"),
            "model sha256": model.get("sha256"),
            "role": run.role + (f" (attacked {row.attacked_from})" if row.attacked_from else ""),
            "data": prov.get("data"),
            "forget set": {k: v for k, v in (prov.get("forget") or {}).items() if k != "class_ids"} or None,
            "sampler": f"{sampler.get('name')} {sampler.get('steps')} steps, guidance {sampler.get('guidance')}, "
                       f"seed {sampler.get('seed')}, {sampler.get('num_samples')} samples",
            "feature extractor": {k: extractor.get(k) for k in ("name", "weights_sha256", "heldout_accuracy") if k in extractor} or None,
            "metrics run": prov.get("metrics_run"),
            "skipped": prov.get("skipped"),
            "timing (s)": prov.get("timing_s"),
            "versions": prov.get("versions"),
            "evaluated": prov.get("created"),
        }
        if run.curve:
            facts["relearning curve"] = [(p.get("step"), round(p.get("forget_rate", 0.0), 4)) for p in run.curve.get("points", [])]
            facts["attack"] = run.curve.get("attack")
            facts["auxiliary data"] = run.curve.get("aux")
        parts.append(f"<details><summary>{_e(run.name)} — {_e(run.role)}, sha256 {_e(str(run.sha256)[:12])}</summary>"
                     f"{_kv_table(facts)}<h4>lineage</h4>{lineage}</details>")
    return "\n".join(parts)


def render_report(comparison: Comparison, figures: dict[str, bytes], *, title: str = "unlearnctl report",
                  recipe: dict[str, Any] | None = None, created: str | None = None) -> str:
    """The report as one HTML string (every image a ``data:`` URI)."""
    import unlearnctl
    from unlearnctl.checkpoint import now_utc

    warnings = "".join(f"<div class='warn'>{_e(w)}</div>" for w in comparison.warnings)
    recipe_html = f"<h3>Recipe</h3>{_kv_table(recipe)}" if recipe else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="meta">{len(comparison.rows)} runs in {len(comparison.scenarios)} scenario(s) · generated {_e(created or now_utc())}
by unlearnctl {_e(unlearnctl.__version__)}</p>
{warnings}
<h2>Summary</h2>
{summary_tables(comparison)}
{recipe_html}
<h2>Figures</h2>
{figures_section(figures)}
<h2>Samples</h2>
<p class="meta">Samples of each model from its evaluation: for conditional models the forget condition (what should be gone) and the retained classes (one row per class); for unconditional models the samples themselves, shown once.</p>
{LOOK_AT_THE_GRIDS}
{grids_section(comparison)}
<h2>Provenance and lineage</h2>
{provenance_section(comparison)}
</body></html>
"""


def write_report(comparison: Comparison, path: str | Path, *, title: str = "unlearnctl report",
                 recipe: dict[str, Any] | None = None) -> list[Path]:
    """Write the HTML report and its figures as ``<stem>-<figure>.png`` next to it; returns the paths written."""
    from unlearnctl.checkpoint import atomic_write_bytes, atomic_write_text, check_output_path
    from unlearnctl.report.plots import all_figures

    path = check_output_path(path, suffix=".html")
    figures = all_figures(comparison)
    written = []
    for name, png in figures.items():
        png_path = path.with_name(f"{path.stem}-{name}.png")
        atomic_write_bytes(png_path, png)
        written.append(png_path)
    atomic_write_text(path, render_report(comparison, figures, title=title, recipe=recipe))
    return [path, *written]

