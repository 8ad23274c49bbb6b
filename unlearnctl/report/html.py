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

from unlearnctl.report.compare import METRICS, Comparison, Row, format_value

FIGURE_TITLES = {
    "pareto": ("Quality vs forget rate",
               "Each point is one model: left = forgot more, down = better samples. Filled markers are unlearned "
               "models, the star the exact-retraining reference, hollow markers the same models after the DiMRA "
               "relearning attack (arrows). The dashed line is the Pareto front of the non-attacked models."),
    "attack": ("Before and after the relearning attack",
               "Forget rate of each model and of the same model fine-tuned by DiMRA on auxiliary data that holds "
               "none of the forget set. Forgetting that comes back was superficial; the reference shows what a "
               "model that never saw the data does under the same attack."),
    "curves": ("Relearning curves", "Forget rate measured along the attack (same sampling seed at every point)."),
}

# differences to the reference beyond these are flagged as worse (red) or better (green)
TOLERANCE = {"forget_rate": 0.03, "retain_accuracy": 0.03, "precision": 0.03, "recall": 0.03, "membership_auc": 0.05}
RELATIVE_TOLERANCE = {"fid": 0.10, "kid": 0.10}
DIRECTION = {key: direction for key, _, _, direction in METRICS}

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px 32px; color: #222; max-width: 1500px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; } .meta { color: #666; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.name, th.name, td.text { text-align: left; }
tr.reference td { background: #eef7ee; font-weight: 600; } tr.attacked td { color: #555; font-style: italic; }
tr.attacked td.name { padding-left: 22px; } tr.groupstart td { border-top: 2px solid #bbb; }
span.worse { color: #b30000; } span.better { color: #1a7f1a; } .delta { font-size: 11px; }
.warn { background: #fff6e0; border: 1px solid #f0c36d; padding: 6px 10px; margin: 6px 0; font-size: 13px; }
figure { margin: 10px 0 24px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; max-width: 1000px; }
.grids { display: flex; flex-wrap: wrap; gap: 14px; } .card { border: 1px solid #ddd; padding: 8px; border-radius: 4px; }
.card h4 { margin: 0 0 6px; font-size: 13px; } .card img { image-rendering: pixelated; display: block; margin-bottom: 4px; }
.card .label { font-size: 11px; color: #666; }
details { margin: 6px 0; font-size: 13px; } summary { cursor: pointer; font-weight: 600; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
table.kv td { white-space: normal; overflow-wrap: anywhere; max-width: 1100px; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _delta_class(key: str, delta: float | None, reference_value: Any) -> str:
    direction = DIRECTION.get(key, 0)
    if delta is None or direction == 0:
        return ""
    tolerance = TOLERANCE.get(key)
    if tolerance is None and key in RELATIVE_TOLERANCE and isinstance(reference_value, (int, float)):
        tolerance = RELATIVE_TOLERANCE[key] * abs(reference_value)
    if tolerance is None or abs(delta) <= tolerance:
        return ""
    return "better" if direction * delta > 0 else "worse"


def _metric_cell(row: Row, key: str, reference: Row | None) -> str:
    value = format_value(key, row.values.get(key))
    delta = row.deltas.get(key)
    if delta is None or row.is_reference:
        return f"<td>{_e(value)}</td>"
    css = _delta_class(key, delta, reference.values.get(key) if reference else None)
    return f"<td>{_e(value)} <span class='delta {css}'>({_e(format_value(key, delta, signed=True))})</span></td>"


def _gap_cell(row: Row) -> str:
    if row.relearn_gap is None:
        return "<td>—</td>"
    css = "worse" if row.relearn_gap > 0.05 else ""
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
                 "<th>relearn gap</th><th>samples</th></tr>"]
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
                         f"<td>{_e(row.run.result.get('num_samples', '—'))}</td></tr>")
        lines.append("</table>")
        parts.append("\n".join(lines))
    legend = ("<p class='meta'>↺ = after the DiMRA relearning attack. Relearn gap = its forget rate − the forget rate of the "
              "model it attacked. Colours flag differences to the reference beyond "
              + ", ".join(f"{k} ±{v}" for k, v in TOLERANCE.items()) + ", FID/KID ±10% (green better, red worse).</p>")
    return "\n".join(parts) + legend


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
            kinds = (("forget", "forget condition"), ("retained", "retained conditions")) if conditional else \
                (("retained", "samples (unconditional: every sample counts for the forget rate)"),)
            for kind, label in kinds:
                if kind in grids:
                    images.append(f"<div class='label'>{label}</div><img alt='{_e(row.run.name)} {label}' "
                                  f"width='224' src='{data_uri(grids[kind])}'>")
            rate = format_value("forget_rate", row.values.get("forget_rate"))
            cards.append(f"<div class='card'><h4>{_e(row.run.name)} <span class='label'>forget rate {_e(rate)}</span></h4>"
                         + "".join(images) + "</div>")
        if cards:
            parts.append(f"<h3>{_e(scenario.label)}</h3><div class='grids'>{''.join(cards)}</div>")
    return "\n".join(parts) or ("<p class='meta'>No sample grids: give checkpoints, or write X.png / X-forget.png next to "
                                "X.json with <code>unlearnctl evaluate --json X.json --grid X.png</code>.</p>")


def _kv_table(rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th class='name'>{_e(k)}</th><td class='text'>{_e(_compact(v))}</td></tr>" for k, v in rows.items())
    return f"<table class='kv'>{cells}</table>"


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
<p class="meta">Samples of each model from its evaluation: for conditional models the forget condition (what should be gone) and the retained conditions (one row per class); for unconditional models the samples themselves.</p>
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

