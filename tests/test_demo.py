"""The main job end to end with tiny settings: every stage writes its ordinary file, the comparison and the
report come out, a rerun reuses finished steps, a replaced file re-runs exactly what depends on it."""

from __future__ import annotations

import json
import re

import pytest

from unlearnctl.demo import DemoConfig, plan, quick_config, run_demo
from unlearnctl.errors import BadInputError

SMALL = dict(methods=("siss", "naive"), canary_methods=("siss",), text_to_image=True, text_methods=("esd-x", "naive"))


@pytest.fixture(scope="module")
def demo_run(classifier_cache, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNLEARNCTL_CACHE", str(classifier_cache))
        out = tmp_path_factory.mktemp("demo") / "out"
        events = []
        result = run_demo(quick_config(**SMALL), out, on_stage=events.append)
    return out, result, events


@pytest.fixture(autouse=True)
def _cache(classifier_cache, monkeypatch):
    monkeypatch.setenv("UNLEARNCTL_CACHE", str(classifier_cache))


def test_demo_writes_every_step_as_an_ordinary_file(demo_run):
    from unlearnctl.checkpoint import load_checkpoint

    out, result, events = demo_run
    names = ["base", "retrain", "siss", "naive", "canary-base", "canary-siss", "t2i-base", "t2i-retrain", "t2i-esd-x", "t2i-naive"]
    for name in names:
        model = load_checkpoint(out / f"{name}.safetensors")
        assert json.loads((out / f"{name}.json").read_text())["provenance"]["model"]["sha256"] == model.sha256
        assert (out / f"{name}.png").is_file()
        # unconditional models: one grid (issue 18); conditional and text-to-image ones: a forget-condition grid too
        assert (out / f"{name}-forget.png").is_file() == (model.conditional or model.text_conditional)
        if name.endswith("base"):
            continue
        attacked = load_checkpoint(out / f"{name}-attacked.safetensors")
        assert attacked.lineage[-1]["command"] == "relearn-attack"
        assert attacked.lineage[-1]["parent_sha256"] == model.sha256
        assert json.loads((out / f"{name}-curve.json").read_text())["schema"] == "unlearnctl.relearn-curve"
        assert (out / f"{name}-attacked.json").is_file()
    for name in ("report.html", "report-pareto.png", "report-attack.png", "report-curves.png", "comparison.md",
                 "comparison.csv", "comparison.json", "experiment.json"):
        assert (out / name).is_file(), name
    # one event per stage, numbered 1..N, none reused on a fresh folder
    assert [e.index for e in events] == list(range(1, len(events) + 1))
    assert all(e.total == len(events) for e in events) and not any(e.reused for e in events)
    assert [e.name for e in events] == plan(quick_config(**SMALL), out)
    assert len(list((out / "stages").glob("*.json"))) == len(events) - 1  # one record per stage, the report aside


def test_demo_comparison_tells_the_story_structure(demo_run):
    out, result, _ = demo_run
    comparison = result.comparison
    assert [s.label for s in comparison.scenarios] == ["digits — forget class 8", "digits+canary — forget the canary",
                                                       "digits (text-to-image) — forget class 8"]
    assert [s.reference for s in comparison.scenarios] == ["retrain", None, "t2i-retrain"]  # no canary retrain by default
    rows = [r.run.name for r in comparison.scenarios[0].rows]
    assert rows == ["base", "retrain", "retrain-attacked", "siss", "siss-attacked", "naive", "naive-attacked"]
    attacked = [r for r in comparison.rows if r.run.attacked]
    assert attacked and all(r.relearn_gap is not None and r.run.curve is not None for r in attacked)
    # the canary scenario's membership audit is calibrated by the class base (same digits, never saw the canary)
    siss = json.loads((out / "canary-siss.json").read_text())
    calibration = siss["provenance"]["details"]["membership"]["calibration"]
    assert calibration["reference_sha256"] == json.loads((out / "base.json").read_text())["provenance"]["model"]["sha256"]
    html = (out / "report.html").read_text()
    assert "Recipe" in html and "base training" in html
    recipe = json.loads((out / "experiment.json").read_text())["recipe"]
    assert [list(s["methods"]) for s in recipe["scenarios"]] == [["siss", "naive"], ["siss"], ["esd-x", "naive"]]
    rows = [r.run.name for r in comparison.scenarios[2].rows]
    assert rows == ["t2i-base", "t2i-retrain", "t2i-retrain-attacked", "t2i-esd-x", "t2i-esd-x-attacked", "t2i-naive",
                    "t2i-naive-attacked"]


def test_rerun_reuses_finished_steps_and_redoes_what_changed(demo_run):
    out, result, _ = demo_run
    config = quick_config(**SMALL)
    # a rerun: nothing runs again but the report
    events = []
    run_demo(config, out, on_stage=events.append)
    assert all(e.reused for e in events[:-1]) and not events[-1].reused
    # an evaluation removed: only it runs again
    (out / "naive-attacked.json").unlink()
    events = []
    run_demo(config, out, on_stage=events.append)
    assert [e.name for e in events[:-1] if not e.reused] == ["evaluate naive-attacked"]
    # a model replaced by hand (another seed): its attack and both evaluations run again, nothing else
    from unlearnctl.checkpoint import load_checkpoint, save_checkpoint
    from unlearnctl.data import ForgetSpec
    from unlearnctl.unlearning import UnlearnConfig, unlearn

    model, _ = unlearn(load_checkpoint(out / "base.safetensors"), "naive", ForgetSpec(classes=("8",)),
                       UnlearnConfig(steps=2, seed=1, device="cpu"))
    save_checkpoint(model, out / "naive.safetensors")
    events = []
    run_demo(config, out, on_stage=events.append)
    assert [e.name for e in events[:-1] if not e.reused] == [
        "attack naive (DiMRA, 4 steps)", "evaluate naive", "evaluate naive-attacked"]


def test_another_recipe_reruns_exactly_the_stages_it_changes(demo_run):
    from unlearnctl.experiment import build_stages, stage_done

    out, _, _ = demo_run
    stale = [s.name for s in build_stages(quick_config(**SMALL, eval_samples=30).experiment()) if not stage_done(out, s)]
    # every evaluation, and every attack: its curve regenerates the evaluation's forget-condition samples
    assert stale and all(name.startswith(("evaluate", "attack")) for name in stale)
    assert len(stale) == len([s for s in build_stages(quick_config(**SMALL).experiment()) if s.kind in ("evaluate", "attack")])
    stale = [s.name for s in build_stages(quick_config(**{**SMALL, "methods": ("siss",)}).experiment()) if not stage_done(out, s)]
    assert stale == []  # a method left out: nothing to run


def test_cli_demo_on_a_finished_folder_prints_table_and_report(cli, demo_run):
    out, _, events = demo_run
    result = cli("demo", "--quick", "--methods", "siss,naive", "--text-methods", "esd-x,naive", "--out", out)
    assert result.code == 0, result
    lines = [line for line in result.err.splitlines() if line.startswith("stage")]
    assert len(lines) == len(events)
    assert re.match(rf"stage +1/{len(events)} +train base .* reused$", lines[0])
    assert "digits — forget class 8" in result.out and "canary-siss" in result.out
    assert f"report: {out / 'report.html'}" in result.out


def test_cli_dry_run_lists_the_full_plan(cli):
    result = cli("demo", "--dry-run", "--no-text-to-image")
    assert result.code == 0, result
    pixel = result.out.strip().splitlines()
    # pixel: 2 trainings, retrain, 8 unlearning runs, 9 attacks, 20 evaluations; the report
    assert len(pixel) == 41 and not any("t2i" in s for s in pixel)
    result = cli("demo", "--dry-run")
    assert result.code == 0, result
    stages = result.out.strip().splitlines()
    # text-to-image adds a training, retrain, 9 unlearning runs (ESD-x and ESD-u among them), 10 attacks, 21 evaluations
    assert len(stages) == 41 + 42
    assert stages[40].strip() == "41. train t2i-base (digits, text-to-image)"
    assert any(s.endswith("unlearn t2i-esd-x (esd-x)") for s in stages) and any(s.endswith("unlearn t2i-esd-u (esd-u)") for s in stages)
    assert "train base" in stages[0] and stages[-1].endswith("compare and write the report")


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods=("retrain",)), "retrain is the reference"),
    (dict(methods=("nope",)), "unknown method"),
    (dict(base_steps=0), "at least 1"),
    (dict(eval_samples=5), "at least 10"),
    (dict(text_methods=("esd-x",), text_to_image=False), "drop --no-text-to-image"),
])
def test_bad_recipes(kwargs, match):
    with pytest.raises(BadInputError, match=match):
        DemoConfig(**kwargs)


def test_canary_retrain_is_the_canary_reference_when_asked():
    stages = plan(DemoConfig(canary_retrain=True), "out")
    assert "unlearn canary-retrain (retrain)" in stages
    assert "evaluate canary-siss (audit: canary-retrain)" in stages
    assert "evaluate canary-siss (audit: base)" in plan(DemoConfig(), "out")


def test_python_api_example_runs(tmp_path):
    """examples/python_api.py --quick: the documented Python API, end to end."""
    import runpy
    import sys
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "python_api.py"
    argv = sys.argv
    sys.argv = [str(example), str(tmp_path / "api"), "--quick"]
    try:
        runpy.run_path(str(example), run_name="__main__")
    finally:
        sys.argv = argv
    from unlearnctl.report import compare, load_runs

    assert (tmp_path / "api" / "report.html").is_file()
    rows = {row.run.name: row for row in compare(load_runs(sorted((tmp_path / "api").glob("*.json")))).rows}
    assert rows["siss-attacked"].attacked_from == "siss" and rows["retrain"].is_reference
