"""``unlearnctl compare`` and :mod:`unlearnctl.report.compare`: roles from lineage, grouping, reference
differences, relearn gaps, the CSV/Markdown/JSON renderings and bad input — on evaluation JSONs shaped like
``unlearnctl evaluate --json`` writes them (real ones come from the demo test)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from unlearnctl.errors import BadInputError
from unlearnctl.report import compare, load_runs
from unlearnctl.report.runs import Run

SPEC_8 = {"classes": ["8"], "indices": [], "canary": False, "images": None}
SPEC_CANARY = {"classes": [], "indices": [], "canary": True, "images": None}


def evaluation(sha: str, lineage: list[dict], *, forget_rate: float, fid: float, retain: float | None = 0.95,
               data: str = "fp-digits", forget: str = "fp-8", spec: dict = SPEC_8, source: str = "digits",
               num_samples: int = 1000) -> dict:
    """An evaluation result with the keys and provenance ``unlearnctl evaluate --json`` writes."""
    from unlearnctl.metrics import METRICS

    result = {"schema": "unlearnctl.evaluate/1"}
    result.update({key: None for metric in METRICS.values() for key in metric.keys})
    result.update(forget_rate=forget_rate, forget_mode="class", fid=fid, kid=fid / 100, precision=0.8, recall=0.7,
                  retain_accuracy=retain, membership_auc=0.6, num_samples=num_samples)
    result["provenance"] = {
        "model": {"path": f"{sha}.safetensors", "sha256": sha, "conditional": True, "lineage": lineage},
        "data": {"source": source, "fingerprint": data},
        "forget": {"mode": "class", "spec": spec, "fingerprint": forget},
        "sampler": {"name": "ddim", "steps": 25, "guidance": 1.0, "seed": 0, "num_samples": num_samples},
        "extractor": {"name": "domain-classifier"}, "metrics_run": ["quality", "forget"], "skipped": {},
    }
    return result


TRAIN = {"command": "train", "method": None, "seed": 0, "forget": None, "parent_sha256": None}


def unlearned(method: str, parent: str) -> list[dict]:
    return [TRAIN, {"command": "unlearn", "method": method, "seed": 0, "forget": SPEC_8, "parent_sha256": parent}]


def attacked(lineage: list[dict], parent: str) -> list[dict]:
    return [*lineage, {"command": "relearn-attack", "method": None, "seed": 0, "forget": None, "parent_sha256": parent}]


RETRAIN = [TRAIN, {"command": "retrain", "method": "retrain", "seed": 0, "forget": SPEC_8, "parent_sha256": "base"}]


@pytest.fixture
def class_files(tmp_path):
    """A class scenario given in scrambled order: base, retrain, salun (+ attacked), siss (+ attacked)."""
    results = {
        "siss-attacked": evaluation("siss-att", attacked(unlearned("siss", "base"), "siss"), forget_rate=0.40, fid=12.0),
        "base": evaluation("base", [TRAIN], forget_rate=0.97, fid=10.0),
        "salun": evaluation("salun", unlearned("salun", "base"), forget_rate=0.20, fid=14.0, retain=0.90),
        "retrain": evaluation("retrain", RETRAIN, forget_rate=0.01, fid=9.0),
        "siss": evaluation("siss", unlearned("siss", "base"), forget_rate=0.05, fid=11.0),
        "salun-attacked": evaluation("salun-att", attacked(unlearned("salun", "base"), "salun"), forget_rate=0.60, fid=13.0),
    }
    paths = {}
    for name, result in results.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(result))
    return paths


def test_roles_come_from_the_lineage():
    base = Run("base", "base.json", evaluation("b", [TRAIN], forget_rate=0.9, fid=1))
    retrain = Run("retrain", "r.json", evaluation("r", RETRAIN, forget_rate=0.0, fid=1))
    excluded = Run("ex", "e.json", evaluation("e", [{**TRAIN, "forget": SPEC_8}], forget_rate=0.0, fid=1))
    siss = Run("siss", "s.json", evaluation("s", unlearned("siss", "b"), forget_rate=0.1, fid=1))
    hit = Run("siss-attacked", "a.json", evaluation("a", attacked(unlearned("siss", "b"), "s"), forget_rate=0.5, fid=1))
    assert [r.role for r in (base, retrain, excluded, siss, hit)] == ["base", "reference", "reference", "unlearned", "attacked"]
    assert [r.group for r in (base, retrain, excluded, siss, hit)] == ["base", "retrain", "retrain", "siss", "siss"]
    assert hit.parent_sha256 == "s" and hit.method == "siss"


def test_rows_grouped_by_method_with_reference_differences(class_files):
    comparison = compare(load_runs(list(class_files.values())))
    assert len(comparison.scenarios) == 1
    scenario = comparison.scenarios[0]
    # base, the reference, then methods in registry order (siss before salun), each followed by its attacked run
    assert [r.run.name for r in scenario.rows] == ["base", "retrain", "siss", "siss-attacked", "salun", "salun-attacked"]
    assert scenario.reference == "retrain"
    rows = {r.run.name: r for r in scenario.rows}
    assert rows["siss"].deltas["forget_rate"] == pytest.approx(0.04)
    assert rows["salun"].deltas["fid"] == pytest.approx(5.0)
    assert rows["salun"].deltas["retain_accuracy"] == pytest.approx(-0.05)
    assert rows["retrain"].deltas["forget_rate"] == 0.0
    # relearn gap: attacked forget rate − forget rate of the model it attacked (matched by parent sha256)
    assert rows["siss-attacked"].relearn_gap == pytest.approx(0.35)
    assert rows["siss-attacked"].attacked_from == "siss"
    assert rows["salun-attacked"].relearn_gap == pytest.approx(0.40)
    assert rows["siss"].relearn_gap is None
    assert comparison.warnings == []


def test_scenarios_are_kept_apart_and_missing_reference_is_warned(class_files, tmp_path):
    canary = tmp_path / "canary-siss.json"
    canary.write_text(json.dumps(evaluation("c-siss", unlearned("siss", "c-base"), forget_rate=0.0, fid=20.0, data="fp-canary",
                                            forget="fp-canary", spec=SPEC_CANARY, source="digits+canary")))
    comparison = compare(load_runs([*class_files.values(), canary]))
    assert [s.label for s in comparison.scenarios] == ["digits — forget class 8", "digits+canary — forget the canary"]
    canary_rows = comparison.scenarios[1].rows
    assert [r.run.name for r in canary_rows] == ["canary-siss"]
    assert canary_rows[0].deltas["forget_rate"] is None  # never compared with the digits reference
    assert any("no reference" in w for w in comparison.warnings)


def test_different_sampler_settings_are_warned(class_files):
    data = json.loads(class_files["siss"].read_text())
    data["provenance"]["sampler"]["num_samples"] = 50
    class_files["siss"].write_text(json.dumps(data))
    assert any("different sampler" in w for w in compare(load_runs(list(class_files.values()))).warnings)


def test_csv_markdown_and_json_renderings(class_files):
    comparison = compare(load_runs(list(class_files.values())))
    rows = list(csv.DictReader(io.StringIO(comparison.to_csv())))
    assert [r["run"] for r in rows][:3] == ["base", "retrain", "siss"]
    siss_attacked = next(r for r in rows if r["run"] == "siss-attacked")
    assert float(siss_attacked["relearn_gap"]) == pytest.approx(0.35)
    assert siss_attacked["role"] == "attacked" and siss_attacked["method"] == "siss"
    assert float(siss_attacked["delta_forget_rate"]) == pytest.approx(0.39)
    markdown = comparison.to_markdown()
    assert "| siss-attacked | siss | 0.400 (+0.390) |" in markdown
    assert "**retrain** (reference)" in markdown
    data = json.loads(comparison.to_json())
    assert data["schema"] == "unlearnctl.compare/1"
    assert data["scenarios"][0]["reference"] == "retrain"
    assert len(data["rows"]) == 6


def test_curve_attaches_to_the_attacked_run(class_files, tmp_path):
    curve = tmp_path / "siss-curve.json"
    curve.write_text(json.dumps({"schema": "unlearnctl.relearn-curve", "model": {"sha256": "siss"},
                                 "points": [{"step": 0, "forget_rate": 0.05, "num_samples": 10}]}))
    runs = load_runs([*class_files.values(), curve])
    assert next(r for r in runs if r.name == "siss-attacked").curve["points"][0]["forget_rate"] == 0.05
    assert len(runs) == 6  # the curve is no run of its own
    stray = tmp_path / "stray-curve.json"
    stray.write_text(json.dumps({"schema": "unlearnctl.relearn-curve", "model": {"sha256": "nobody"}, "points": []}))
    with pytest.raises(BadInputError, match="no compared run"):
        load_runs([class_files["siss"], stray])


def curve_file(path, model: str, attacked_sha: str, aux: str, lr: float, rates: list[tuple[int, float]], n: int | None = None):
    """A relearning-curve JSON as relearn-attack --curve-json writes it (``n``: points carry Wilson intervals)."""
    from unlearnctl.metrics.intervals import rate_fields

    points = [{"step": step, "forget_rate": rate, "num_samples": n or 10,
               **(rate_fields("forget_rate", round(rate * n), n) if n else {})} for step, rate in rates]
    path.write_text(json.dumps({"schema": "unlearnctl.relearn-curve", "model": {"sha256": model}, "attacked_sha256": attacked_sha,
                                "attack": {"name": "dimra", "steps": rates[-1][0], "lr": lr, "batch_size": 128, "seed": 0},
                                "aux": {"spec": aux}, "points": points}))
    return path


def test_relearning_area_minus_retrains_under_the_same_budget(class_files, tmp_path):
    from unlearnctl.metrics.intervals import wilson

    files = list(class_files.values())
    extra = {  # retrain attacked at two learning rates, siss at a second one (siss-attacked is its lr 1e-4 attack)
        "retrain-att-4": evaluation("retrain-att-4", attacked(RETRAIN, "retrain"), forget_rate=0.1, fid=9.0),
        "retrain-att-3": evaluation("retrain-att-3", attacked(RETRAIN, "retrain"), forget_rate=0.2, fid=9.0),
        "siss-att-3": evaluation("siss-att-3", attacked(unlearned("siss", "base"), "siss"), forget_rate=0.9, fid=12.0),
    }
    for name, result in extra.items():
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(result))
    files += [curve_file(tmp_path / "c1.json", "retrain", "retrain-att-4", "retain", 1e-4, [(0, 0.0), (10, 0.1)], n=100),
              curve_file(tmp_path / "c2.json", "siss", "siss-att", "retain", 1e-4, [(0, 0.1), (5, 0.3), (10, 0.5)], n=100),
              curve_file(tmp_path / "c3.json", "retrain", "retrain-att-3", "retain", 1e-3, [(0, 0.0), (10, 0.2)]),
              curve_file(tmp_path / "c4.json", "siss", "siss-att-3", "retain", 1e-3, [(0, 0.1), (10, 0.9)]),
              curve_file(tmp_path / "c5.json", "salun", "salun-att", "generated", 1e-4, [(0, 0.2), (10, 0.6)])]
    comparison = compare(load_runs(files))
    rows = {(r.label, r.budget["lr"], r.budget["aux"]): r for r in comparison.scenarios[0].relearning}
    assert set(rows) == {("retrain", 1e-4, "retain"), ("siss", 1e-4, "retain"), ("retrain", 1e-3, "retain"),
                         ("siss", 1e-3, "retain"), ("salun", 1e-4, "generated")}
    siss = rows[("siss", 1e-4, "retain")]
    assert siss.area == pytest.approx((5 * (0.1 + 0.3) / 2 + 5 * (0.3 + 0.5) / 2) / 10)  # 0.3
    assert siss.reference_area == pytest.approx(0.05) and siss.delta == pytest.approx(0.25)
    lows, highs = zip(*(wilson(k, 100) for k in (10, 30, 50)))
    assert siss.interval == pytest.approx(((lows[0] + 2 * lows[1] + lows[2]) / 4, (highs[0] + 2 * highs[1] + highs[2]) / 4))
    ref_low, ref_high = (wilson(0, 100)[0] + wilson(10, 100)[0]) / 2, (wilson(0, 100)[1] + wilson(10, 100)[1]) / 2
    assert siss.delta_interval == pytest.approx((siss.interval[0] - ref_high, siss.interval[1] - ref_low))
    assert siss.similar is False  # [0.23, 0.37] vs retrain's [0.02, 0.12]
    fast = rows[("siss", 1e-3, "retain")]
    assert fast.delta == pytest.approx(0.5 - 0.1) and fast.interval is None and fast.delta_interval is None
    salun = rows[("salun", 1e-4, "generated")]
    assert salun.reference_area is None and salun.delta is None  # no retrain curve under that budget
    markdown = comparison.to_markdown()
    assert "| siss | retain, lr 0.0001, 10 steps | 0.300 [" in markdown and "| +0.250 [" in markdown
    assert "| retrain (reference) | retain, lr 0.001, 10 steps | 0.100 |" in markdown
    data = json.loads(comparison.to_json())
    assert len(data["relearning"]) == 5
    assert {r["label"]: r["delta_relearn_area"] for r in data["relearning"] if r["budget"]["lr"] == 1e-3} == {
        "retrain": None, "siss": pytest.approx(0.4)}


def test_sibling_grids_are_picked_up(class_files):
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 20
    class_files["siss"].with_suffix(".png").write_bytes(png)
    class_files["siss"].with_name("siss-forget.png").write_bytes(png)
    runs = {r.name: r for r in load_runs(list(class_files.values()))}
    assert set(runs["siss"].grids) == {"retained", "forget"}
    assert runs["base"].grids == {}


@pytest.mark.parametrize("content, match", [
    ({"schema": "something-else"}, "schema"),
    ({"schema": "unlearnctl.evaluate/1"}, "provenance"),
    ([1, 2], "must hold a JSON object"),
])
def test_bad_json_inputs(tmp_path, content, match):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(content))
    with pytest.raises(BadInputError, match=match):
        load_runs([path])


def test_bad_paths(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_runs([tmp_path / "missing.json"])
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"x")
    with pytest.raises(BadInputError, match="compare reads"):
        load_runs([pickle])
    with pytest.raises(BadInputError, match="nothing to compare"):
        load_runs([])


# --------------------------------------------------------------------------------------------- CLI


def test_cli_table_and_files(cli, class_files, tmp_path):
    out_csv, out_md = tmp_path / "t.csv", tmp_path / "t.md"
    result = cli("compare", *class_files.values(), "--csv", out_csv, "--markdown", out_md)
    assert result.code == 0, result
    assert "digits — forget class 8" in result.out and "reference: retrain" in result.out
    assert "0.400 (+0.390)" in result.out  # siss-attacked: value and difference to the reference, uncut
    assert "+0.350" in result.out  # its relearn gap
    assert out_csv.read_text().startswith("run,source,scenario,method,role")
    assert "| run | method |" in out_md.read_text()


def test_cli_json_to_stdout_is_clean(cli, class_files):
    result = cli("compare", *class_files.values(), "--json", "-")
    assert result.code == 0, result
    assert json.loads(result.out)["schema"] == "unlearnctl.compare/1"


@pytest.mark.parametrize("args, match", [
    (["--csv", "out.txt"], "must end in .csv"),
    (["--csv", "-", "--json", "-"], "only one of"),
    (["--report", "r.pdf"], "must end in .html"),
])
def test_cli_bad_outputs_exit_2_before_any_work(cli, class_files, tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    result = cli("compare", class_files["siss"], *args)
    assert result.code == 2 and match in result.err, result


def test_cli_bad_input_exit_2(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = cli("compare", bad)
    assert result.code == 2 and "not valid JSON" in result.err


def test_cli_evaluates_checkpoints_on_the_fly(cli, tiny_conditional, tmp_path, tmp_path_factory, monkeypatch):
    """A checkpoint input is evaluated now; its samples become the report's grids."""
    # the session cache tests/metrics uses too, so the shapes classifier is trained once per test session
    monkeypatch.setenv("UNLEARNCTL_CACHE", str(tmp_path_factory.getbasetemp() / "classifier-cache"))
    report = tmp_path / "r.html"
    result = cli("compare", tiny_conditional.path, "--forget-class", "bar", "-n", "8", "--steps", "2",
                 "--json", tmp_path / "c.json", "--report", report)
    assert result.code == 0, result
    assert f"evaluating {tiny_conditional.path}" in result.err
    row = json.loads((tmp_path / "c.json").read_text())["rows"][0]
    assert row["role"] == "base" and row["num_samples"] == 8 and row["forget_rate"] is not None
    html = report.read_text()
    assert "forget condition" in html and "retained classes, one row each" in html


# --------------------------------------------------------------------------------------------- intervals and seeds


def with_interval(result: dict, key: str, low: float, high: float) -> dict:
    result[f"{key}_ci95_low"], result[f"{key}_ci95_high"] = low, high
    return result


def seeded(lineage: list[dict], seed: int, digest: str = "d1") -> list[dict]:
    """The lineage with every entry's seed set and a params digest (what evaluate records)."""
    return [{**entry, "seed": seed, "params_digest": digest} for entry in lineage]


def test_intervals_are_shown_and_overlaps_marked(tmp_path):
    retrain = with_interval(evaluation("r", RETRAIN, forget_rate=0.02, fid=9.0), "forget_rate", 0.01, 0.05)
    close = with_interval(evaluation("s", unlearned("siss", "b"), forget_rate=0.04, fid=9.5), "forget_rate", 0.02, 0.08)
    apart = with_interval(evaluation("n", unlearned("naive", "b"), forget_rate=0.30, fid=9.5), "forget_rate", 0.25, 0.36)
    old = evaluation("a", unlearned("salun", "b"), forget_rate=0.05, fid=9.0)  # an old file: no interval keys
    paths = []
    for name, result in (("retrain", retrain), ("siss", close), ("naive", apart), ("salun", old)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    comparison = compare(load_runs(paths))
    rows = {r.run.name: r for r in comparison.rows}
    assert rows["siss"].intervals["forget_rate"] == (0.02, 0.08) and rows["siss"].overlaps["forget_rate"] is True
    assert rows["naive"].overlaps["forget_rate"] is False
    assert rows["salun"].intervals["forget_rate"] is None and rows["salun"].overlaps["forget_rate"] is None
    markdown = comparison.to_markdown()
    assert "0.040 [0.020, 0.080] (≈ +0.020)" in markdown
    assert "0.300 [0.250, 0.360] (+0.280)" in markdown
    assert "| salun | salun | 0.050 (+0.030) |" in markdown  # the old file compares as before
    flat = {r["run"]: r for r in comparison.to_json_dict()["rows"]}
    assert flat["siss"]["forget_rate_ci95_high"] == 0.08 and flat["siss"]["similar_forget_rate"] is True


def test_runs_differing_only_in_seed_are_aggregated(tmp_path, cli):
    from scipy import stats

    results = {
        "retrain-s0": evaluation("r0", seeded(RETRAIN, 0), forget_rate=0.02, fid=9.0),
        "retrain-s1": evaluation("r1", seeded(RETRAIN, 1), forget_rate=0.04, fid=9.4),
        "siss-s0": evaluation("s0", seeded(unlearned("siss", "b0"), 0), forget_rate=0.05, fid=11.0),
        "siss-s1": evaluation("s1", seeded(unlearned("siss", "b1"), 1), forget_rate=0.09, fid=12.0),
        "siss-lr": evaluation("s2", seeded(unlearned("siss", "b0"), 2, digest="d2"), forget_rate=0.50, fid=30.0),
    }
    paths = []
    for name, result in results.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    comparison = compare(load_runs(paths))
    scenario = comparison.scenarios[0]
    aggregates = {a.group: a for a in scenario.aggregates}
    assert set(aggregates) == {"retrain", "siss"}  # siss-lr has other parameters: a run of its own
    siss = aggregates["siss"]
    assert siss.runs == ["siss-s0", "siss-s1"] and siss.label == "siss ×2 seeds"
    assert siss.values["forget_rate"] == pytest.approx(0.07)
    expected = stats.t.interval(0.95, 1, loc=0.07, scale=stats.sem([0.05, 0.09]))
    assert siss.intervals["forget_rate"] == pytest.approx(expected)
    assert siss.deltas["forget_rate"] == pytest.approx(0.04)  # to the retrain aggregate's mean 0.03
    assert siss.overlaps["forget_rate"] is True  # two seeds: wide t-intervals
    assert comparison.warnings == [] and scenario.reference_label == "retrain ×2 seeds"  # seeds of one reference
    shown = [getattr(r, "label") for r in scenario.display_rows()]
    assert shown == ["retrain ×2 seeds", "siss ×2 seeds", "siss-lr"]
    assert len(comparison.to_json_dict()["rows"]) == 5 and len(comparison.to_json_dict()["aggregates"]) == 2
    assert "siss ×2 seeds" in comparison.to_markdown()
    rows = list(csv.DictReader(io.StringIO(comparison.to_csv())))
    assert rows[-1]["num_seeds"] == "2" and rows[-1]["runs"] in ("retrain-s0 retrain-s1", "siss-s0 siss-s1")
    result = cli("compare", *paths)
    assert result.code == 0 and "siss ×2 seeds" in result.out, result


def test_the_same_seeds_twice_are_not_aggregated(tmp_path):
    paths = []
    for name in ("a", "b"):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(evaluation(name, seeded(unlearned("siss", "b0"), 0), forget_rate=0.05, fid=11.0)))
    assert compare(load_runs(paths)).scenarios[0].aggregates == []
