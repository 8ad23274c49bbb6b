"""The report's figures (matplotlib, Agg backend), each returned as PNG bytes or ``None`` when there is
nothing to draw.

* :func:`pareto_plot` — quality (FID) against forget rate, one panel per scenario; the Pareto front of
  the non-attacked runs, the reference as a star, an arrow from each model to its attacked version.
* :func:`attack_plot` — forget rate before and after the relearning attack, per method, with the base's
  and the reference's forget rates as lines.
* :func:`curves_plot` — relearning curves (forget rate against attack steps), where runs carry one.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unlearnctl.report.compare import Comparison, Row, Scenario

DPI = 110
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _colours(comparison: "Comparison") -> dict[str, str]:
    groups = list(dict.fromkeys(row.run.group for row in comparison.rows))
    return {group: PALETTE[i % len(PALETTE)] for i, group in enumerate(groups)}


def _panels(count: int, width: float = 5.6, height: float = 4.4):
    plt = _pyplot()
    figure, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return figure, list(axes[0])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimised), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((ox <= x and oy <= y) and (ox < x or oy < y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _quality_key(scenario: "Scenario") -> str | None:
    for key in ("fid", "kid"):
        if sum(row.values.get(key) is not None and row.values.get("forget_rate") is not None for row in scenario.rows) >= 1:
            return key
    return None


def pareto_plot(comparison: "Comparison") -> bytes | None:
    scenarios = [s for s in comparison.scenarios if _quality_key(s)]
    if not scenarios:
        return None
    colours = _colours(comparison)
    figure, axes = _panels(len(scenarios))
    for ax, scenario in zip(axes, scenarios):
        key = _quality_key(scenario)
        rows = [r for r in scenario.rows if r.values.get(key) is not None and r.values.get("forget_rate") is not None]
        position = {r.run.name: (r.values["forget_rate"], r.values[key]) for r in rows}
        plain = [r for r in rows if not r.run.attacked]
        front = [plain[i] for i in pareto_front([position[r.run.name] for r in plain])]
        if len(front) >= 2:
            xs, ys = zip(*[position[r.run.name] for r in front])
            ax.step(xs, ys, where="post", color="#999999", linestyle="--", linewidth=1, zorder=1, label="Pareto front")
        for row in rows:
            x, y = position[row.run.name]
            colour = colours[row.run.group]
            if row.run.attacked:
                ax.scatter([x], [y], s=60, facecolors="white", edgecolors=colour, linewidths=1.8, zorder=3)
                if row.attacked_from in position:
                    px, py = position[row.attacked_from]
                    ax.annotate("", xy=(x, y), xytext=(px, py),
                                arrowprops={"arrowstyle": "->", "color": colour, "alpha": 0.7, "linewidth": 1.2}, zorder=2)
            else:
                marker = "*" if row.is_reference else ("s" if row.run.role == "base" else "o")
                ax.scatter([x], [y], s=180 if marker == "*" else 60, marker=marker, color=colour, zorder=4,
                           edgecolors="black" if row.is_reference else "none")
                ax.annotate(row.run.name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.scatter([], [], s=60, facecolors="white", edgecolors="#555555", label="after relearning attack")
        ax.scatter([], [], s=120, marker="*", color="#555555", label="reference (retrain)")
        values = [v for _, v in position.values() if v > 0]
        log = bool(values) and max(values) / min(values) > 8  # one collapsed model must not flatten the others
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("forget rate (lower = forgot more)")
        ax.set_ylabel(f"{key.upper()} to the retain set (lower = better{', log scale' if log else ''})")
        ax.set_title(scenario.label, fontsize=10)
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    figure.suptitle("Quality vs forgetting", fontsize=11)
    return _png(figure)


def _attack_pairs(scenario: "Scenario") -> list[tuple["Row", "Row"]]:
    """(model, its attacked version) pairs with both forget rates measured."""
    pairs = []
    for row in scenario.rows:
        if row.run.attacked and row.attacked_from:
            parent = scenario.find(row.attacked_from)
            if parent is not None and parent.values.get("forget_rate") is not None and row.values.get("forget_rate") is not None:
                pairs.append((parent, row))
    return pairs


def attack_plot(comparison: "Comparison") -> bytes | None:
    scenarios = [(s, _attack_pairs(s)) for s in comparison.scenarios]
    scenarios = [(s, p) for s, p in scenarios if p]
    if not scenarios:
        return None
    figure, axes = _panels(len(scenarios), width=max(4.0, 0.9 * max(len(p) for _, p in scenarios) + 2.0))
    for ax, (scenario, pairs) in zip(axes, scenarios):
        names = [parent.run.name for parent, _ in pairs]
        before = [parent.values["forget_rate"] for parent, _ in pairs]
        after = [attacked.values["forget_rate"] for _, attacked in pairs]
        xs = range(len(pairs))
        ax.bar([x - 0.2 for x in xs], before, width=0.4, color="#4c72b0", label="unlearned")
        ax.bar([x + 0.2 for x in xs], after, width=0.4, color="#dd8452", label="after relearning attack")
        for x, b, a in zip(xs, before, after):
            ax.text(x - 0.2, b + 0.01, f"{b:.2f}", ha="center", va="bottom", fontsize=7)
            ax.text(x + 0.2, a + 0.01, f"{a:.2f}", ha="center", va="bottom", fontsize=7)
        base = next((r for r in scenario.rows if r.run.role == "base" and r.values.get("forget_rate") is not None), None)
        if base is not None:
            ax.axhline(base.values["forget_rate"], color="#333333", linestyle="--", linewidth=1, label=f"base ({base.run.name})")
        reference = scenario.find(scenario.reference) if scenario.reference else None
        if reference is not None and reference.values.get("forget_rate") is not None:
            ax.axhline(reference.values["forget_rate"], color="#2ca02c", linestyle=":", linewidth=1.5,
                       label=f"reference ({reference.run.name})")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("forget rate")
        ax.set_title(scenario.label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    figure.suptitle("Forget rate before and after the DiMRA relearning attack", fontsize=11)
    return _png(figure)


def curves_plot(comparison: "Comparison") -> bytes | None:
    scenarios = []
    for scenario in comparison.scenarios:
        curves, seen = [], set()
        for row in scenario.rows:
            curve = row.run.curve
            if curve and curve.get("points") and id(curve) not in seen:
                seen.add(id(curve))
                label = row.attacked_from or row.run.name
                curves.append((label, row.run.group, curve))
        if curves:
            scenarios.append((scenario, curves))
    if not scenarios:
        return None
    colours = _colours(comparison)
    figure, axes = _panels(len(scenarios))
    for ax, (scenario, curves) in zip(axes, scenarios):
        for label, group, curve in curves:
            steps = [p["step"] for p in curve["points"]]
            rates = [p["forget_rate"] for p in curve["points"]]
            ax.plot(steps, rates, marker="o", markersize=3, color=colours.get(group, "#333333"), label=label)
        metric = curves[0][2].get("metric") or {}
        ax.set_xlabel("relearning-attack steps")
        ax.set_ylabel(f"forget rate ({metric.get('num_samples', '?')} samples per point)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(scenario.label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    figure.suptitle("Relearning curves", fontsize=11)
    return _png(figure)


FIGURES = {"pareto": pareto_plot, "attack": attack_plot, "curves": curves_plot}


def all_figures(comparison: "Comparison") -> dict[str, bytes]:
    """Every figure that has something to draw, by name."""
    figures = {}
    for name, draw in FIGURES.items():
        png = draw(comparison)
        if png is not None:
            figures[name] = png
    return figures
