"""Comparing runs: load evaluations (or evaluate checkpoints), group them, and render tables and a report.

::

    from unlearnctl.report import compare, load_runs, write_report

    runs = load_runs(["base.json", "retrain.json", "siss.json", "siss-attacked.json", "siss-curve.json"])
    comparison = compare(runs)
    print(comparison.to_markdown())
    write_report(comparison, "report.html")  # + report-pareto.png, report-attack.png, report-curves.png

* :mod:`unlearnctl.report.runs` — :class:`Run` and :func:`load_runs` (what each input is, from its lineage);
* :mod:`unlearnctl.report.compare` — :func:`compare` → :class:`Comparison` (CSV, Markdown, JSON);
* :mod:`unlearnctl.report.plots` — the matplotlib figures;
* :mod:`unlearnctl.report.html` — the self-contained HTML report.
"""

from unlearnctl.report.compare import Comparison, compare
from unlearnctl.report.runs import Run, load_runs


def write_report(comparison, path, *, title="unlearnctl report", recipe=None):
    """Write the HTML report and its PNG figures (see :func:`unlearnctl.report.html.write_report`)."""
    from unlearnctl.report.html import write_report as write

    return write(comparison, path, title=title, recipe=recipe)


__all__ = ["Comparison", "Run", "compare", "load_runs", "write_report"]
