"""Experiment files (unlearnctl/experiment.py, `unlearnctl run`): two methods × two seeds on tiny models run end to
end; a rerun reuses every stage; a run killed mid-stage resumes to the same files as an uninterrupted run; bad
files exit 2 with one line and write nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unlearnctl.errors import BadInputError
from unlearnctl.experiment import build_stages, load_experiment, parse_experiment, plan, run_experiment, stage_done

ROOT = Path(__file__).parents[1]


def two_methods() -> list[str]:
    """Two cheap fine-tuning methods of the class scenario, from the registry (the last two listed)."""
    from unlearnctl.methods import available_methods

    return available_methods("class", exact=False)[-2:]


def scenario_toml(methods: str) -> str:
    """One class scenario (forget 8 of the digits, no retrain) with the ``methods`` value given."""
    return f"""
[[scenarios]]
name = "class"
prefix = ""
data = "digits"
forget = {{ classes = ["8"] }}
retrain = false
methods = {methods}
"""


def tiny_toml(seeds="[0, 1]", attack_steps=3) -> str:
    first, second = two_methods()
    return f"""
title = "tiny experiment"
seeds = {seeds}

[train]
preset = "tiny"
steps = 30
batch_size = 32
warmup_steps = 5
{scenario_toml(f'{{ "{first}" = {{ lr = 2e-4 }}, "{second}" = {{}} }}')}
[unlearn]
steps = 3

[[attacks]]
aux = "retain"
steps = {attack_steps}
batch_size = 16
curve_every = 3
curve_sample_steps = 3

[evaluation]
num_samples = 20
steps = 3
audit_repeats = 1
audit_max_images = 16
bootstrap_rounds = 50
"""


@pytest.fixture(autouse=True)
def _cache(classifier_cache, monkeypatch):
    monkeypatch.setenv("UNLEARNCTL_CACHE", str(classifier_cache))


def cli_env(classifier_cache) -> dict[str, str]:
    return {**os.environ, "UNLEARNCTL_CACHE": str(classifier_cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "SOURCE_DATE_EPOCH": "1700000000"}


def cli_command(toml: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from unlearnctl.cli.app import main; main()", "run", str(toml), "--out", str(out),
            "--device", "cpu", "--quiet", *extra]


@pytest.fixture(scope="module")
def finished(classifier_cache, tmp_path_factory):
    """The tiny experiment run once, uninterrupted, through the CLI (reproducible: SOURCE_DATE_EPOCH)."""
    folder = tmp_path_factory.mktemp("experiment")
    toml = folder / "tiny.toml"
    toml.write_text(tiny_toml())
    out = folder / "out"
    started = time.perf_counter()
    result = subprocess.run(cli_command(toml, out), env=cli_env(classifier_cache), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return toml, out, time.perf_counter() - started


def digests(out: Path) -> dict[str, str]:
    """sha256 of every model, evaluation, grid and curve (the comparison and the manifest aside), the folder's path
    replaced by ``OUT``."""
    found = {}
    for path in sorted(out.iterdir()):
        if path.suffix in (".safetensors", ".json", ".png") and not path.name.startswith(("comparison", "experiment", "report")):
            payload = path.read_bytes().replace(str(out).encode(), b"OUT")  # evaluations name their model's path
            found[path.name] = hashlib.sha256(payload).hexdigest()
    return found


def test_two_methods_two_seeds_run_end_to_end_and_compare_over_seeds(finished):
    from unlearnctl.report import compare, load_runs

    toml, out, _ = finished
    experiment = load_experiment(toml)
    assert len(plan(experiment)) == 2 * (2 + 2 * 4) + 1  # per seed: train, evaluate base, 2 × (unlearn, attack, 2 evaluations)
    for seed in (0, 1):
        for model in ["base", *two_methods()]:
            assert (out / f"{model}-seed{seed}.safetensors").is_file()
            assert (out / f"{model}-seed{seed}.json").is_file()
        for method in two_methods():
            assert (out / f"{method}-seed{seed}-attacked.json").is_file()
            assert (out / f"{method}-seed{seed}-curve.json").is_file()
    first = json.loads((out / f"{two_methods()[0]}-seed1.json").read_text())
    assert first["provenance"]["model"]["lineage"][-1]["seed"] == 1
    # compare aggregates the seeds: one aggregate per method, unlearned and attacked, and for the base
    comparison = json.loads((out / "comparison.json").read_text())
    assert (out / "report.html").is_file() and "seeds" in (out / "comparison.md").read_text()
    runs = load_runs(sorted(out.glob("*-seed*.json")))
    aggregates = compare(runs).scenarios[0].aggregates
    assert sorted((a.group, a.attacked, len(a.runs)) for a in aggregates) == sorted(
        [("base", False, 2)] + [(m, attacked, 2) for m in two_methods() for attacked in (False, True)])
    assert comparison  # written and parseable
    # every stage left its record
    assert len(list((out / "stages").glob("*.json"))) == len(plan(experiment)) - 1


def test_a_rerun_reuses_every_stage(finished):
    toml, out, _ = finished
    before = digests(out)
    events = []
    run_experiment(load_experiment(toml), out, device="cpu", on_stage=events.append)
    assert all(e.reused for e in events[:-1]) and not events[-1].reused
    assert digests(out) == before


def test_a_changed_setting_reruns_exactly_what_it_changes(finished):
    toml, out, _ = finished
    changed = parse_experiment(__import__("tomllib").loads(tiny_toml(attack_steps=4)))
    stale = [s.name for s in build_stages(changed) if not stage_done(out, s)]
    # 2 seeds × 2 methods: the attacks, nothing upstream; (the evaluations of their results follow once the
    # attacked files change: their inputs, test_demo's replaced-file test)
    assert stale == [s.name for s in build_stages(changed) if s.kind == "attack"] and len(stale) == 4


def test_a_killed_run_resumes_to_the_same_files(finished, classifier_cache, tmp_path):
    toml, reference, _ = finished
    out = tmp_path / "out"
    env = cli_env(classifier_cache)
    process = subprocess.Popen(cli_command(toml, out, "--jobs", "2"), env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:  # kill the run (workers too) once its first stage has finished, wherever the others are
        deadline = time.monotonic() + 600
        while not list((out / "stages").glob("*.json")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = len(list((out / "stages").glob("*.json")))
    assert done >= 1
    result = subprocess.run(cli_command(toml, out), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "experiment.json").read_text())
    reused = sum(stage["reused"] for stage in manifest["stages"])
    assert reused >= done  # the stages finished before the kill were not run again
    assert digests(out) == digests(reference)
    assert (out / "comparison.md").read_text() == (reference / "comparison.md").read_text()


def test_parallel_and_sequential_plans_hold_the_same_stages():
    experiment = parse_experiment(__import__("tomllib").loads(tiny_toml()))
    stages = build_stages(experiment)
    outputs = [name for stage in stages for name in stage.outputs]
    assert len(outputs) == len(set(outputs))
    made = set()
    for stage in stages:  # the sequential order runs every stage after the stages making its inputs
        assert set(stage.inputs) <= made, stage.name
        made.update(stage.outputs)


@pytest.mark.parametrize("text, match", [
    ("seeds = [0,\n", "not valid TOML"),
    ('seeds = [0]\nnope = 1\n', "unknown key 'nope'"),
    ('[[scenarios]]\nname = "c"\ndata = "digits"\nforget = { classes = ["8"] }\nmethods = ["no-such-method"]\n', "unknown method"),
    ('[[scenarios]]\nname = "c"\ndata = "digits"\nforget = { classes = ["8"] }\nmethods = ["retrain"]\n', "retrain is the reference"),
    ('[[scenarios]]\nname = "c"\ndata = "digits"\nforget = { classes = ["8"] }\n[train]\nsteps = 5\nlearning_rate = 1\n',
     "unknown key 'learning_rate' in table train"),
    ('seeds = [0]\n[train]\nsteps = [1]\n', r"\[1\]"),  # brackets in a message are text, not markup
    ('seeds = [0, 0]\n[[scenarios]]\nname = "c"\ndata = "digits"\nforget = { classes = ["8"] }\n', "seed is listed twice"),
    ('[[scenarios]]\nname = "c"\ndata = "digits"\nforget = {}\n', "forget is empty"),
    ('unlearn_seeds = [1, 1]\n[[scenarios]]\nname = "c"\ndata = "digits"\nforget = { classes = ["8"] }\n', "unlearning seed is listed twice"),
    ('unlearn_seeds = [-1]\n[[scenarios]]\nname = "c"\ndata = "digits"\nforget = { classes = ["8"] }\n', "unlearn_seeds must be"),
    ('[[scenarios]]\nname = "c"\ndata = "digits"\nforget = { classes = ["8"] }\n[[attacks]]\ncurve_every = 5\ncurve_samples = 500\n',
     "curve_samples has no effect in an experiment file"),  # the curve regenerates the evaluation's forget rows
])
def test_bad_files_exit_2_with_one_line_and_write_nothing(cli, tmp_path, text, match):
    import re

    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    out = tmp_path / "out"
    result = cli("run", toml, "--out", out)
    assert result.code == 2, result
    assert len(result.err.strip().splitlines()) == 1 and re.search(match, result.err), result.err
    assert not out.exists()


def test_a_method_parameter_is_checked_against_the_method(tmp_path):
    first = two_methods()[0]
    text = tiny_toml().replace(f'"{first}" = {{ lr = 2e-4 }}', f'"{first}" = {{ no_such_parameter = 1 }}')
    with pytest.raises(BadInputError, match=f"'no_such_parameter' is not a parameter of method {first}"):
        parse_experiment(__import__("tomllib").loads(text))


def test_all_methods_come_from_the_registry():
    from unlearnctl.methods import available_methods

    text = tiny_toml().replace(tiny_toml().split("methods = ")[1].split("\n")[0], '"all"')
    experiment = parse_experiment(__import__("tomllib").loads(text))
    assert list(experiment.scenarios[0].methods) == available_methods("class", exact=False)


def test_run_dry_run_lists_the_stages(cli, tmp_path):
    toml = tmp_path / "tiny.toml"
    toml.write_text(tiny_toml())
    result = cli("run", toml, "--out", tmp_path / "out", "--dry-run")
    assert result.code == 0, result
    lines = result.out.strip().splitlines()
    assert len(lines) == 21 and "train base-seed0" in lines[0] and lines[-1].endswith("compare and write the report")
    assert not (tmp_path / "out").exists()


def test_examples_demo_is_the_packaged_demo():
    assert (ROOT / "examples" / "demo.toml").read_bytes() == (ROOT / "unlearnctl" / "experiments" / "demo.toml").read_bytes()


def test_the_dimra_reproduction_file_is_a_valid_experiment(cli, tmp_path):
    """The protocol fixed before running (docs/attack.md): 3 seeds × (base, retrain, 4 methods), 6 budgets."""
    result = cli("run", ROOT / "examples" / "dimra-reproduction.toml", "--out", tmp_path / "out", "--dry-run")
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert sum("attack " in line for line in lines) == 3 * 5 * 6
    assert not (tmp_path / "out").exists()


def test_the_dimra_pilot_file_is_a_valid_experiment(cli, tmp_path):
    """The pilot fixed before running (docs/attack.md): one base, retrain attacked once, 4 methods × 3 unlearning
    seeds each attacked once, every model evaluated."""
    result = cli("run", ROOT / "examples" / "dimra-pilot.toml", "--out", tmp_path / "out", "--dry-run")
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert sum("attack " in line for line in lines) == 1 + 4 * 3
    assert sum("unlearn " in line and "-useed" in line for line in lines) == 4 * 3
    assert sum("evaluate " in line for line in lines) == 2 * (2 + 4 * 3) - 1  # base is not attacked
    assert not (tmp_path / "out").exists()


def grid_toml(methods: str, evaluation: str = "") -> str:
    return f"""{scenario_toml(methods)}
[evaluation]
num_samples = 20
{evaluation}
"""


def test_a_grid_point_is_a_run_named_other_than_its_method():
    first, second = two_methods()
    text = grid_toml(f'{{ "{first}" = {{}}, "{first}-s3" = {{ method = "{first}", steps = 3 }}, '
                     f'"{first}-s5" = {{ method = "{first}", steps = 5, lr = 1e-4 }}, "{second}" = {{ method = "{second}" }} }}')
    experiment = parse_experiment(__import__("tomllib").loads(text))
    unlearn = {s.outputs[0]: s for s in build_stages(experiment) if s.kind == "unlearn"}
    assert list(unlearn) == [f"{first}.safetensors", f"{first}-s3.safetensors", f"{first}-s5.safetensors", f"{second}.safetensors"]
    assert [s.params["method"] for s in unlearn.values()] == [first, first, first, second]
    assert unlearn[f"{first}-s3.safetensors"].params["loop"] == {"steps": 3}
    assert unlearn[f"{first}-s5.safetensors"].params["loop"] == {"steps": 5, "lr": 1e-4}
    assert all("method" not in s.params["method_params"] for s in unlearn.values())
    # the plain form (no method key, or the run's own name) is recorded as before: stage digests stay put
    assert experiment.scenarios[0].methods[first] == {} and experiment.scenarios[0].methods[second] == {}
    plain = parse_experiment(__import__("tomllib").loads(grid_toml(f'["{first}", "{second}"]')))
    plain_unlearn = {s.outputs[0]: s.params_digest for s in build_stages(plain) if s.kind == "unlearn"}
    assert plain_unlearn[f"{second}.safetensors"] == unlearn[f"{second}.safetensors"].params_digest


@pytest.mark.parametrize("methods, match", [
    ('{ "NAME-x" = { method = "no-such-method" } }', "unknown method"),
    ('{ base = { method = "NAME" } }', "not base or retrain"),
    ('{ "a b" = { method = "NAME" } }', "must be a word"),
    ('{ OTHER = { method = "NAME" } }', "is a method's name"),
    ('{ "NAME-x" = { method = 3 } }', "must be a method name"),
    ('{ "NAME-x" = { method = "retrain" } }', "retrain is the reference"),
])
def test_a_bad_grid_point_is_refused(methods, match):
    first, second = two_methods()
    text = grid_toml(methods.replace("NAME", first).replace("OTHER", second))
    with pytest.raises(BadInputError, match=match):
        parse_experiment(__import__("tomllib").loads(text))


def test_evaluation_metrics_select_the_metric_groups():
    from unlearnctl.experiment import _eval_config

    first = two_methods()[0]
    experiment = parse_experiment(__import__("tomllib").loads(grid_toml(f'["{first}"]', 'metrics = ["forget", "retain"]')))
    config = _eval_config(experiment.evaluation, seed=0, reference=None, device="cpu")
    assert config.metrics == ("forget", "retain")
    without = parse_experiment(__import__("tomllib").loads(grid_toml(f'["{first}"]')))
    assert "metrics" not in without.evaluation  # absent: every group, and the demo's stage digests unchanged
    for bad, match in (('metrics = "forget"', "must be a non-empty list"), ("metrics = []", "must be a non-empty list"),
                       ('metrics = ["nope"]', "nope")):
        with pytest.raises(BadInputError, match=match):
            parse_experiment(__import__("tomllib").loads(grid_toml(f'["{first}"]', bad)))


def test_the_siss_pareto_file_is_a_grid_of_siss_runs(cli, tmp_path):
    """examples/siss-pareto.toml (docs/methods.md, SISS's Pareto front): 3 steps × 3 learning rates and the default."""
    experiment = load_experiment(ROOT / "examples" / "siss-pareto.toml")
    unlearn = [s for s in build_stages(experiment) if s.kind == "unlearn" and s.params["method"] != "retrain"]
    assert len(unlearn) == 10 and {s.params["method"] for s in unlearn} == {"siss"}
    grid = {(s.params["loop"]["steps"], s.params["loop"]["lr"]) for s in unlearn if s.params["loop"]}
    assert grid == {(steps, lr) for steps in (100, 200, 400) for lr in (3e-5, 1e-4, 3e-4)}
    assert experiment.evaluation["num_samples"] // 10 >= 500  # forget-condition samples per point
    result = cli("run", ROOT / "examples" / "siss-pareto.toml", "--out", tmp_path / "out", "--dry-run")
    assert result.code == 0, result.err


def test_the_siss_pareto_file_runs_quick_and_its_table_marks_the_front(classifier_cache, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(cli_command(ROOT / "examples" / "siss-pareto.toml", out, "--quick"),
                            env=cli_env(classifier_cache), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = json.loads((out / "siss-s2-lr3e-5.json").read_text())
    assert evaluation["forget_rate_count"] is not None and evaluation.get("membership_auc") is None  # no audit: not in metrics
    sys.path.insert(0, str(ROOT / "bench"))
    from siss_pareto import points, table

    found = {p["name"]: p for p in points(out)}
    assert {name: (p["steps"], p["lr"]) for name, p in found.items()} == {"siss-s2-lr3e-5": (2, 3e-5), "siss-s4-lr3e-4": (4, 3e-4)}
    assert any(p["pareto"] for p in found.values())
    text = table(out)
    assert len(text.splitlines()) == 2 + 1 + len(found)  # header and rule, base, the points
    assert f"({evaluation['forget_rate_count']}/{evaluation['forget_rate_n']})" in text


def test_unlearn_seeds_repeat_each_method_on_one_base():
    """`unlearn_seeds`: every method runs (and is attacked) once per unlearning seed on the same base; the base,
    retrain and every evaluation keep the base's seed; without the key the stages are exactly as before."""
    import tomllib

    first, second = two_methods()
    plain = {s.id: s for s in build_stages(parse_experiment(tomllib.loads(tiny_toml(seeds="[0]"))))}
    stages = {s.id: s for s in build_stages(parse_experiment(tomllib.loads("unlearn_seeds = [3, 4]\n" + tiny_toml(seeds="[0]"))))}
    for method in (first, second):
        assert f"unlearn-{method}" in plain and f"unlearn-{method}" not in stages
        for u in (3, 4):
            assert stages[f"unlearn-{method}-useed{u}"].params["seed"] == u
            assert stages[f"unlearn-{method}-useed{u}"].inputs == ["base.safetensors"]
            assert stages[f"attack-{method}-useed{u}-attacked"].params["seed"] == u
            for evaluated in (f"{method}-useed{u}", f"{method}-useed{u}-attacked"):
                assert stages[f"evaluate-{evaluated}"].params["seed"] == 0
    assert stages["train-base"].params_digest == plain["train-base"].params_digest
    assert stages["evaluate-base"].params_digest == plain["evaluate-base"].params_digest
    assert len(stages) == len(plain) + 2 * 4  # per method one more (unlearn, attack, 2 evaluations)


def test_unlearn_seeds_give_different_runs_that_compare_aggregates(tmp_path):
    import tomllib

    from unlearnctl.report import compare, load_runs

    first = two_methods()[0]
    text = f"""unlearn_seeds = [0, 1]
[train]
preset = "tiny"
steps = 30
batch_size = 32
warmup_steps = 5
{scenario_toml(f'["{first}"]')}
[unlearn]
steps = 3

[evaluation]
num_samples = 20
steps = 3
metrics = ["forget", "retain"]
"""
    out = tmp_path / "out"
    run_experiment(parse_experiment(tomllib.loads(text)), out, device="cpu")
    runs = [out / f"{first}-useed{u}.safetensors" for u in (0, 1)]
    assert runs[0].read_bytes() != runs[1].read_bytes()
    aggregates = compare(load_runs([out / f"{first}-useed{u}.json" for u in (0, 1)])).scenarios[0].aggregates
    assert [(a.group, len(a.runs)) for a in aggregates] == [(first, 2)]
