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


def robust_limit(values: list[float], factor: float = 3.0) -> float | None:
    """An upper axis limit that leaves out outliers (values above ``factor`` × the median, like a collapsed model's
    FID of 450 among FIDs of 10), or ``None`` when nothing needs clipping."""
    ordered = sorted(v for v in values if v == v)
    if len(ordered) < 3:
        return None
    median = ordered[len(ordered) // 2]
    kept = [v for v in ordered if v <= factor * max(median, 1e-12)]
    if len(kept) == len(ordered) or not kept:
        return None
    low = min(kept)
    return max(kept) + 0.15 * max(max(kept) - low, 1e-9)


def place_labels(ax, labels: list[tuple[str, float, float]], markers: list[tuple[float, float]], fontsize: int = 8) -> None:
    """Annotate points with ``(text, x, y)`` without overlaps: each label tries offsets around its point (right,
    left, above, below, then further out) and takes the first whose box stays inside the axes and hits no other
    label and none of the ``markers``."""
    figure = ax.figure
    renderer = figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []  # display-space boxes (x0, y0, x1, y1) of placed labels and of every marker
    for x, y in markers:
        px, py = ax.transData.transform((x, y))
        taken.append((px - 5, py - 5, px + 5, py + 5))
    offsets = [(6, 4), (6, -12), (-6, 4), (-6, -12), (6, 14), (-6, 14), (6, -22), (-6, -22), (14, 24), (14, -32), (-14, 24),
               (-14, -32), (20, 36), (20, -44)]
    for text, x, y in labels:
        best = None
        for dx, dy in offsets:
            note = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                               ha="left" if dx > 0 else "right", va="bottom",
                               arrowprops={"arrowstyle": "-", "color": "#999999", "linewidth": 0.6} if abs(dy) > 14 else None)
            box = note.get_window_extent(renderer)
            rect = (box.x0, box.y0, box.x1, box.y1)
            outside = rect[0] < frame.x0 or rect[2] > frame.x1 or rect[1] < frame.y0 or rect[3] > frame.y1
            clash = outside or any(rect[0] < t[2] and t[0] < rect[2] and rect[1] < t[3] and t[1] < rect[3] for t in taken)
            if not clash:
                best = rect
                break
            note.remove()
        if best is None:  # crowded everywhere: keep the first position
            note = ax.annotate(text, (x, y), textcoords="offset points", xytext=offsets[0], fontsize=fontsize)
            box = note.get_window_extent(renderer)
            best = (box.x0, box.y0, box.x1, box.y1)
        taken.append(best)


def pareto_plot(comparison: "Comparison") -> bytes | None:
    scenarios = [s for s in comparison.scenarios if _quality_key(s)]
    if not scenarios:
        return None
    colours = _colours(comparison)
    figure, axes = _panels(len(scenarios), width=6.4, height=5.0)
    for ax, scenario in zip(axes, scenarios):
        key = _quality_key(scenario)
        rows = [r for r in scenario.rows if r.values.get(key) is not None and r.values.get("forget_rate") is not None]
        position = {r.run.name: (r.values["forget_rate"], r.values[key]) for r in rows}
        top = robust_limit([y for _, y in position.values()])
        shown = {name: (x, min(y, top) if top is not None else y) for name, (x, y) in position.items()}
        plain = [r for r in rows if not r.run.attacked]
        front = [plain[i] for i in pareto_front([position[r.run.name] for r in plain])]
        front_points = [shown[r.run.name] for r in front if top is None or position[r.run.name][1] <= top]
        if len(front_points) >= 2:
            xs, ys = zip(*front_points)
            ax.step(xs, ys, where="post", color="#999999", linestyle="--", linewidth=1, zorder=1, label="Pareto front")
        labels = []
        for row in rows:
            x, y = shown[row.run.name]
            clipped = top is not None and position[row.run.name][1] > top
            colour = colours[row.run.group]
            if row.run.attacked:
                ax.scatter([x], [y], s=60, marker="^" if clipped else "o", facecolors="white", edgecolors=colour,
                           linewidths=1.8, zorder=3)
                if row.attacked_from in shown:
                    px, py = shown[row.attacked_from]
                    ax.annotate("", xy=(x, y), xytext=(px, py),
                                arrowprops={"arrowstyle": "->", "color": colour, "alpha": 0.7, "linewidth": 1.2}, zorder=2)
                continue
            if row.is_reference:
                continue  # drawn last, on top of everything
            marker = "^" if clipped else ("s" if row.run.role == "base" else "o")
            ax.scatter([x], [y], s=70 if clipped else 60, marker=marker, color=colour, zorder=4)
            value = position[row.run.name][1]
            labels.append((f"{row.run.name} ({key.upper()} {value:.0f}, off the scale)" if clipped else row.run.name, x, y))
        for row in rows:
            if row.is_reference and not row.run.attacked:
                x, y = shown[row.run.name]
                ax.scatter([x], [y], s=320, marker="*", color=colours[row.run.group], edgecolors="black", linewidths=1.0,
                           zorder=6)
                labels.insert(0, (f"{row.run.name} (reference)", x, y))
        ax.scatter([], [], s=60, facecolors="white", edgecolors="#555555", label="after relearning attack")
        ax.scatter([], [], s=160, marker="*", color="#555555", edgecolors="black", label="reference (retrain)")
        if top is not None:
            ax.scatter([], [], s=60, marker="^", color="#555555", label=f"{key.upper()} above {top:.3g}: drawn at the top")
        ys = [y for _, y in shown.values()]
        span = max(ys) - min(ys) or max(abs(max(ys)), 1.0) * 0.1
        ax.set_ylim(min(ys) - 0.12 * span, max(ys) + 0.12 * span)
        ax.set_xlim(-0.05, 1.05)
        ax.set_xlabel("forget rate (retrain's is the target)")
        ax.set_ylabel(f"{key.upper()} to the retain set (lower = better)")
        ax.set_title(scenario.label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
        figure.canvas.draw()
        place_labels(ax, labels, list(shown.values()))
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


def _note_figure(text: str) -> bytes:
    """A small figure holding one sentence (a figure slot whose data would draw nothing)."""
    import textwrap

    plt = _pyplot()
    figure = plt.figure(figsize=(7.0, 0.9))
    figure.text(0.01, 0.5, textwrap.fill(text, 110), fontsize=9, ha="left", va="center")
    return _png(figure)


def attack_plot(comparison: "Comparison") -> bytes | None:
    scenarios = [(s, _attack_pairs(s)) for s in comparison.scenarios]
    # a panel whose bars are all zero says nothing a sentence cannot: it becomes a note under the figure
    empty = [s for s, p in scenarios if p and all(max(a.values["forget_rate"], b.values["forget_rate"]) < 0.005 for a, b in p)]
    scenarios = [(s, p) for s, p in scenarios if p and s not in empty]
    if not scenarios:
        return _note_figure("Forget rate before and after the DiMRA relearning attack: nothing to draw — every forget "
                            "rate is 0.000 before and after the attack (" + "; ".join(s.label for s in empty) + ")") if empty else None
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
    if empty:
        figure.text(0.01, -0.02, "Not drawn (every forget rate 0.000 before and after the attack): "
                    + "; ".join(s.label for s in empty), fontsize=8, ha="left", va="top")
    return _png(figure)


def same_samples(curve: dict, run) -> bool:
    """Whether ``curve``'s points were sampled like ``run``'s evaluation sampled its forget condition: the curve
    regenerates the forget rows of `evaluate --num-samples N --steps S --seed X` (DDIM, no guidance), so its step 0
    is the evaluation's forget rate when N, S and X are the evaluation's."""
    metric, sampler = curve.get("metric") or {}, run.provenance.get("sampler") or {}
    return (metric.get("eval_num_samples") is not None and sampler.get("name") == "ddim" and sampler.get("guidance") == 1.0
            and (metric.get("eval_num_samples"), metric.get("sample_steps"), metric.get("seed"))
            == (sampler.get("num_samples"), sampler.get("steps"), sampler.get("seed")))


def curves_plot(comparison: "Comparison") -> bytes | None:
    scenarios = []
    for scenario in comparison.scenarios:
        curves, seen = [], set()
        for row in scenario.rows:
            curve = row.run.curve
            if curve and curve.get("points") and id(curve) not in seen:
                seen.add(id(curve))
                label = row.attacked_from or row.run.name
                before = scenario.find(row.attacked_from) if row.attacked_from else (row if not row.run.attacked else None)
                curves.append((label, row.run.group, curve, before))
        if curves:
            scenarios.append((scenario, curves))
    if not scenarios:
        return None
    from unlearnctl.attacks.area import attack_budget, budget_key, budget_label

    colours = _colours(comparison)
    figure, axes = _panels(len(scenarios))
    for ax, (scenario, curves) in zip(axes, scenarios):
        table_points = set()
        budgets = list(dict.fromkeys(budget_key(attack_budget(curve)) for _, _, curve, _ in curves))
        for label, group, curve, before in curves:
            steps = [p["step"] for p in curve["points"]]
            rates = [p["forget_rate"] for p in curve["points"]]
            colour = colours.get(group, "#333333")
            budget = attack_budget(curve)
            if len(budgets) > 1:  # one model attacked at several budgets: the budget names the line, its style tells them apart
                label = f"{label}: {budget_label(budget)}"
            style = ("-", "--", ":", "-.")[budgets.index(budget_key(budget)) % 4]
            ax.plot(steps, rates, marker="o", markersize=3, color=colour, linestyle=style, label=label)
            if before is not None and before.values.get("forget_rate") is not None:
                ax.scatter([0], [before.values["forget_rate"]], s=55, marker="D", facecolors="none", edgecolors=colour,
                           linewidths=1.4, zorder=4)
                table_points.add(same_samples(curve, before.run))
        for same in sorted(table_points):
            ax.scatter([], [], s=55, marker="D", facecolors="none", edgecolors="#555555",
                       label="the table's forget rate: " + ("the same samples as step 0" if same else
                                                            "other samples than the curve's (see the report's provenance)"))
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
