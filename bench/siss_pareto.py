"""SISS's Pareto front (docs/methods.md): the table of a finished ``examples/siss-pareto.toml`` run.

    unlearnctl run examples/siss-pareto.toml --out pareto-out
    python bench/siss_pareto.py pareto-out            # Markdown table on stdout

Reads every evaluation JSON of the folder's unlearned models (``siss*.json``, not ``*-attacked``) and their
checkpoints' lineage (steps, learning rate, wall time of the unlearning run), plus ``base.json`` and
``retrain.json``. A point is **Pareto-optimal** when no other point has a forget rate at most its own and a
retain accuracy at least its own, one of them strictly (point estimates). Two points are
**indistinguishable** when their 95% Wilson intervals overlap in both the forget rate and the retain accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rate(result: dict, key: str) -> str:
    return (f"{result[key]:.3f} ({result[key + '_count']}/{result[key + '_n']}) "
            f"[{result[key + '_ci95_low']:.3f}, {result[key + '_ci95_high']:.3f}]")


def interval(result: dict, key: str) -> tuple[float, float]:
    return result[key + "_ci95_low"], result[key + "_ci95_high"]


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def lineage(path: Path) -> dict:
    """The checkpoint's last lineage entry (the unlearning run)."""
    from unlearnctl.checkpoint import load_checkpoint

    return load_checkpoint(path).lineage[-1]


def points(folder: Path) -> list[dict]:
    found = []
    for json_path in sorted(folder.glob("siss*.json")):
        if "-attacked" in json_path.stem or "-curve" in json_path.stem:
            continue
        entry = lineage(folder / f"{json_path.stem}.safetensors")
        params = entry["params"]
        found.append({"name": json_path.stem, "steps": entry["steps_run"], "lr": params["lr"],
                      "wall_s": entry["wall_time_s"], "result": json.loads(json_path.read_text())})
    found.sort(key=lambda p: (p["lr"], p["steps"]))
    for p in found:
        forget, retain = p["result"]["forget_rate"], p["result"]["retain_accuracy"]
        p["pareto"] = not any(q is not p and q["result"]["forget_rate"] <= forget and q["result"]["retain_accuracy"] >= retain
                              and (q["result"]["forget_rate"], q["result"]["retain_accuracy"]) != (forget, retain)
                              for q in found)
    for p in found:
        p["same_as"] = [q["name"] for q in found if q is not p
                        and overlap(interval(p["result"], "forget_rate"), interval(q["result"], "forget_rate"))
                        and overlap(interval(p["result"], "retain_accuracy"), interval(q["result"], "retain_accuracy"))]
    return found


def table(folder: Path) -> str:
    base = json.loads((folder / "base.json").read_text())
    rows = ["| run | steps | lr | forget rate (count/n) [95%] | retain acc (count/n) [95%] | Δ retain | FID [95%] "
            "| unlearn s | Pareto | indistinguishable from (both intervals overlap) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---|"]

    def fid(result: dict) -> str:
        return f"{result['fid']:.2f} [{result['fid_ci95_low']:.2f}, {result['fid_ci95_high']:.2f}]" if result.get("fid") is not None else "—"

    for name in ("base", "retrain"):
        path = folder / f"{name}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            delta = result["retain_accuracy"] - base["retain_accuracy"]
            rows.append(f"| {name} | — | — | {rate(result, 'forget_rate')} | {rate(result, 'retain_accuracy')} | "
                        f"{'—' if name == 'base' else f'{delta:+.3f}'} | {fid(result)} | — | | |")
    for p in points(folder):
        result = p["result"]
        delta = result["retain_accuracy"] - base["retain_accuracy"]
        same = overlap(interval(result, "retain_accuracy"), interval(base, "retain_accuracy"))
        wall = "—" if p["wall_s"] is None else f"{p['wall_s']:.0f}"  # no wall-clock figures under SOURCE_DATE_EPOCH
        rows.append(f"| {p['name']} | {p['steps']} | {p['lr']:g} | {rate(result, 'forget_rate')} | "
                    f"{rate(result, 'retain_accuracy')} | {'≈ ' if same else ''}{delta:+.3f} | {fid(result)} | "
                    f"{wall} | {'★' if p['pareto'] else ''} | {', '.join(p['same_as']) or '—'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the --out folder of `unlearnctl run examples/siss-pareto.toml`")
    print(table(parser.parse_args().folder))


if __name__ == "__main__":
    main()
