"""Text-to-image scenarios in experiment files (unlearnctl/experiment.py, docs/experiments.md): the plan of a concept
scenario is retrain plus every registered method for text-to-image concepts (ESD included); keys that mean nothing
for the scenario's kind of model exit 2; a tiny scenario runs end to end through the CLI and a rerun reuses every
stage; adding a text-to-image scenario leaves the pixel scenarios' stages as they were."""

from __future__ import annotations

import json
import subprocess
import tomllib

import pytest

from test_experiment import cli_command, cli_env, digests
from unlearnctl.errors import BadInputError
from unlearnctl.experiment import build_stages, parse_experiment, plan


def text_toml(methods: str = '"all"', scenario: str = "", train: str = "", quick: str = "") -> str:
    """One text-to-image scenario on the digits forgetting the concept 8, retrain as its reference; tiny sizes."""
    return f"""
title = "tiny text-to-image experiment"

[train]
steps = 6
batch_size = 8
warmup_steps = 1
autoencoder_steps = 2
{train}
[[scenarios]]
name = "t2i"
data = "digits"
model = "text-to-image"
forget = {{ classes = ["8"] }}
retrain = true
methods = {methods}
{scenario}
[unlearn]
steps = 2

[[attacks]]
aux = "retain"
steps = 2
batch_size = 8
curve_every = 2
curve_sample_steps = 2

[evaluation]
num_samples = 20
steps = 2
audit_repeats = 1
audit_max_images = 16
bootstrap_rounds = 20
{quick}"""


def parse(text: str, quick: bool = False):
    return parse_experiment(tomllib.loads(text), quick=quick)


PIXEL = """
[[scenarios]]
name = "class"
prefix = ""
data = "digits"
forget = { classes = ["8"] }
retrain = false
methods = ["naive"]
"""


@pytest.fixture(autouse=True)
def _cache(classifier_cache, monkeypatch):
    monkeypatch.setenv("UNLEARNCTL_CACHE", str(classifier_cache))


def test_all_methods_of_a_concept_scenario_come_from_the_registry_esd_included(cli, tmp_path):
    from unlearnctl.methods import available_methods

    experiment = parse(text_toml())
    scenario = experiment.scenarios[0]
    assert scenario.model == "text-to-image" and scenario.text
    assert list(scenario.methods) == available_methods("concept", exact=False)
    assert {"esd-x", "esd-u"} <= set(scenario.methods)  # made for text-to-image models: only in concept scenarios
    assert not {"esd-x", "esd-u"} & (set(available_methods("class")) | set(available_methods("canary")))
    toml = tmp_path / "t2i.toml"
    toml.write_text(text_toml())
    result = cli("run", toml, "--out", tmp_path / "out", "--dry-run")
    assert result.code == 0, result
    lines = [line.split(". ", 1)[1] for line in result.out.strip().splitlines()]
    assert lines[:2] == ["train t2i-base (digits, text-to-image)", "unlearn t2i-retrain (retrain)"]
    assert [line for line in lines if line.startswith("unlearn ")][1:] == [
        f"unlearn t2i-{m} ({m})" for m in available_methods("concept", exact=False)]
    assert not (tmp_path / "out").exists()


def test_a_data_scenario_of_a_text_model_lists_the_methods_that_forget_data():
    from unlearnctl.methods import available_methods

    experiment = parse(text_toml().replace('forget = { classes = ["8"] }', "forget = { indices = [0, 1, 2] }"))
    assert list(experiment.scenarios[0].methods) == available_methods("canary", exact=False)


def test_the_stages_of_a_text_scenario_carry_its_model_and_its_own_settings():
    scenario = 'train = { steps = 5, autoencoder_steps = 3 }\nevaluation = { num_samples = 30 }\nunlearn = { lr = 3e-5 }\n'
    experiment = parse(text_toml('["naive"]', scenario))
    stages = {s.id: s for s in build_stages(experiment)}
    train = stages["train-t2i-base"].params
    assert train["model"] == "text-to-image" and "conditional" not in train
    assert train["train"] == {"steps": 5, "batch_size": 8, "warmup_steps": 1, "autoencoder_steps": 3}  # no preset
    assert stages["unlearn-t2i-naive"].params["loop"] == {"steps": 2, "lr": 3e-5}
    assert stages["evaluate-t2i-naive"].params["evaluation"]["num_samples"] == 30
    assert stages["attack-t2i-naive-attacked"].params["attack"]["curve_eval_samples"] == 30  # the curve matches it
    assert stages["evaluate-t2i-naive"].outputs == ["t2i-naive.json", "t2i-naive.png", "t2i-naive-forget.png"]
    # without its own autoencoder_steps, the experiment's [train] value; without either, the library's default
    from unlearnctl.text_to_image import AUTOENCODER_STEPS

    assert build_stages(parse(text_toml('["naive"]')))[0].params["train"]["autoencoder_steps"] == 2
    default = text_toml('["naive"]').replace("autoencoder_steps = 2\n", "")
    assert build_stages(parse(default))[0].params["train"]["autoencoder_steps"] == AUTOENCODER_STEPS


def test_quick_sizes_win_over_a_scenarios_own():
    scenario = 'train = { steps = 500, autoencoder_steps = 300 }\nevaluation = { num_samples = 300 }\n'
    quick = '[quick]\ntrain = { steps = 3, autoencoder_steps = 1 }\nevaluation = { num_samples = 10 }\n'
    experiment = parse(text_toml('["naive"]', scenario, quick=quick), quick=True)
    stages = {s.id: s for s in build_stages(experiment)}
    assert stages["train-t2i-base"].params["train"]["steps"] == 3
    assert stages["train-t2i-base"].params["train"]["autoencoder_steps"] == 1
    assert stages["evaluate-t2i-base"].params["evaluation"]["num_samples"] == 10
    plain = parse(text_toml('["naive"]', scenario, quick=quick))  # without --quick: the scenario's own
    assert build_stages(plain)[0].params["train"]["autoencoder_steps"] == 300


def test_a_scenarios_own_attacks_replace_the_experiments_for_its_models_only():
    head, rest = text_toml().split("[[scenarios]]")
    own = 'attacks = [{ name = "short", aux = "retain", steps = 3, batch_size = 8 }]\n'
    experiment = parse(head + PIXEL + "[[scenarios]]" + rest.replace("[unlearn]", own + "[unlearn]"))
    stages = {s.id: s for s in build_stages(experiment)}
    assert stages["attack-t2i-naive-attacked-short"].params["attack"] == {"steps": 3, "batch_size": 8}
    assert "evaluate-t2i-naive-attacked-short" in stages and "attack-t2i-naive-attacked" not in stages
    pixel_attacks = [s for s in stages if s.startswith("attack-") and not s.startswith("attack-t2i-")]
    assert pixel_attacks and all(s.endswith("-attacked") for s in pixel_attacks)  # the experiment's one attack
    assert stages[pixel_attacks[0]].params["attack"]["steps"] == 2
    quick = '[quick]\nattacks = [{ aux = "retain", steps = 1 }]\n'
    quicked = parse(text_toml('["naive"]', own, quick=quick), quick=True)  # --quick's attacks replace a scenario's too
    assert {s.id: s for s in build_stages(quicked)}["attack-t2i-naive-attacked"].params["attack"]["steps"] == 1


def test_parallel_runs_start_the_longest_chain_first():
    """--jobs orders ready stages by their longest chain to the end: a base before anything, a retrain (a training
    run) before the methods' short unlearn → attack → evaluate chains, an unlearn before an evaluation."""
    from unlearnctl.demo import DemoConfig
    from unlearnctl.experiment import STAGE_COSTS, critical_path

    stages = build_stages(DemoConfig().experiment())
    chain = critical_path(stages)
    assert chain["train-t2i-base"] == max(chain.values())
    methods = [s.id for s in stages if s.id.startswith("unlearn-t2i-") and s.id != "unlearn-t2i-retrain"]
    assert len(methods) >= 3 and all(chain["unlearn-t2i-retrain"] > chain[m] for m in methods)
    assert chain["unlearn-t2i-naive"] == STAGE_COSTS["unlearn"] + STAGE_COSTS["attack"] + STAGE_COSTS["evaluate"]
    assert chain["evaluate-t2i-naive-attacked"] == STAGE_COSTS["evaluate"]
    assert chain["train-t2i-base"] == STAGE_COSTS["train"] + chain["unlearn-t2i-retrain"]


def test_a_text_scenario_leaves_the_pixel_stages_as_they_were():
    """Stage digests of a pixel scenario do not change when a text-to-image scenario (and its autoencoder_steps) is
    added: a finished pixel run stays finished."""
    head, rest = text_toml().split("[[scenarios]]")
    scenario, tail = rest.split("[unlearn]")
    pixel = parse(head.replace("autoencoder_steps = 2\n", "") + PIXEL + "[unlearn]" + tail)
    both = parse(head + PIXEL + "[[scenarios]]" + scenario + "[unlearn]" + tail)
    before = {s.id: s.params_digest for s in build_stages(pixel)}
    after = {s.id: s.params_digest for s in build_stages(both) if s.id in before}
    assert after == before
    assert set(before) < {s.id for s in build_stages(both)}
    train = build_stages(both)[0].params
    assert train["conditional"] is True and "model" not in train and "autoencoder_steps" not in train["train"]


def test_the_demo_pixel_stages_are_unchanged_by_its_text_scenario():
    from unlearnctl.demo import DemoConfig

    pixel = {s.id: s.params_digest for s in build_stages(DemoConfig(text_to_image=False).experiment())}
    demo = {s.id: s.params_digest for s in build_stages(DemoConfig().experiment())}
    assert {k: v for k, v in demo.items() if not k.split("-", 1)[1].startswith("t2i-")} == pixel
    assert any(k.startswith("unlearn-t2i-esd") for k in demo)


@pytest.mark.parametrize("text, match", [
    (text_toml().split("[[scenarios]]")[0].replace("autoencoder_steps = 2\n", "")
     + PIXEL.replace('classes = ["8"]', 'prompts = ["a handwritten digit eight"]'), "forget.prompts names a concept"),
    (text_toml().split("[[scenarios]]")[0] + PIXEL + "train = { autoencoder_steps = 5 }\n",
     "train.autoencoder_steps is for text-to-image scenarios"),
    (text_toml(scenario="conditional = true"), "conditional is for pixel models"),
    (text_toml(scenario='train = { preset = "tiny" }'), "train.preset sizes a pixel UNet"),
    (text_toml(scenario='train = { autoencoder_steps = 0 }'), "autoencoder_steps must be an integer >= 1"),
    (text_toml(train="learning_rate = 1"), "unknown key 'learning_rate'"),
    (text_toml().replace("autoencoder_steps = 2", "autoencoder_steps = true"), "autoencoder_steps must be an integer"),
    (text_toml().replace('model = "text-to-image"', 'model = "latent"'), "model must be one of pixel, text-to-image"),
    (text_toml().replace('classes = ["8"]', 'prompts = "a handwritten digit eight"'), "forget.prompts must be a list"),
    (text_toml(scenario="evaluation = { num_samples = 5 }"), "t2i: evaluation.num_samples must be at least 10"),
    (text_toml(scenario="unlearn = { nope = 1 }"), "unknown key 'nope' in scenario t2i: unlearn"),
    (text_toml(scenario="train = { steps = 0 }"), "steps must be at least 1"),
    (text_toml(scenario="attacks = 3"), "scenario t2i: attacks must be an array of tables"),
    (text_toml(scenario='attacks = [{ aux = "retain", nope = 1 }]'), "unknown key 'nope' in scenario t2i: attack #1"),
])
def test_keys_that_mean_nothing_for_the_model_exit_2(cli, tmp_path, text, match):
    import re

    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    result = cli("run", toml, "--out", tmp_path / "out")
    assert result.code == 2, result
    assert len(result.err.strip().splitlines()) == 1 and re.search(match, result.err), result.err
    assert not (tmp_path / "out").exists()


def test_a_method_named_on_a_model_family_it_does_not_run_on_exits_2(cli, tmp_path):
    """The registry's ``models`` of every named method are checked when the file is read: a text-to-image-only
    method (ESD) in a pixel scenario, a pixel-only method in a text-to-image scenario."""
    import re
    from dataclasses import dataclass

    from unlearnctl.methods import available_methods, get_method, register_method, unregister_method
    from unlearnctl.methods.base import Method

    text_only = [m for m in available_methods(exact=False) if get_method(m).models == ("text-to-image",)][0]

    @register_method("pixel-only-test")
    @dataclass
    class PixelOnly(Method):
        """A method for pixel models only."""

        models = ("pixel",)

    head = text_toml().split("[[scenarios]]")[0].replace("autoencoder_steps = 2\n", "")
    cases = [
        (head + PIXEL.replace('["naive"]', f'["{text_only}"]'), text_only, "pixel"),
        (head + PIXEL.replace('["naive"]', f'{{ grid = {{ method = "{text_only}", lr = 1e-5 }} }}'), text_only, "pixel"),
        (text_toml('["pixel-only-test"]'), "pixel-only-test", "text-to-image"),
    ]
    try:
        assert parse(text_toml('["pixel-only-test"]').replace('model = "text-to-image"\n', "")
                     .replace("autoencoder_steps = 2\n", "")).scenarios[0].methods == {"pixel-only-test": {}}
        assert parse(text_toml(f'["{text_only}"]').replace('classes = ["8"]', "indices = [0, 1, 2]")).scenarios[0].methods
        for i, (text, method, family) in enumerate(cases):
            runs_on = " and ".join(get_method(method).models)
            toml = tmp_path / f"bad{i}.toml"
            toml.write_text(text)
            result = cli("run", toml, "--out", tmp_path / "out")
            assert result.code == 2, result
            message = rf"scenario \w+: method {method} runs on {runs_on} models only, and this scenario's model is {family}"
            assert len(result.err.strip().splitlines()) == 1 and re.search(message, result.err), result.err
            assert method not in result.err.split("list one of:")[1]
            assert not (tmp_path / "out").exists()
    finally:
        unregister_method("pixel-only-test")


def test_forget_prompts_are_recorded_as_forget_spec_does():
    from unlearnctl.data import ForgetSpec

    experiment = parse(text_toml('["naive"]').replace('classes = ["8"]', 'prompts = ["a handwritten digit eight"]'))
    forget = experiment.scenarios[0].forget
    assert ForgetSpec.from_dict(forget).to_dict() == forget
    assert ForgetSpec.from_dict(forget).prompts == ("a handwritten digit eight",)
    with pytest.raises(BadInputError, match="forget is empty"):
        parse(text_toml().replace('classes = ["8"]', "prompts = []"))


@pytest.fixture(scope="module")
def text_run(classifier_cache, tmp_path_factory):
    """The tiny text-to-image scenario with two methods of the registry's concept list (ESD-x and the cheapest
    other), run once through the CLI."""
    from unlearnctl.methods import available_methods

    methods = ["esd-x", available_methods("concept", exact=False)[-1]]
    folder = tmp_path_factory.mktemp("text-experiment")
    toml = folder / "t2i.toml"
    toml.write_text(text_toml(json.dumps(methods)))
    out = folder / "out"
    result = subprocess.run(cli_command(toml, out), env=cli_env(classifier_cache), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return toml, out, methods


def test_a_text_scenario_runs_end_to_end(text_run):
    from unlearnctl.checkpoint import load_checkpoint

    _, out, methods = text_run
    base = load_checkpoint(out / "t2i-base.safetensors")
    assert base.text_conditional and base.lineage[-1]["command"] == "train"
    retrain = load_checkpoint(out / "t2i-retrain.safetensors")
    assert retrain.text_conditional and retrain.lineage[-1]["method"] == "retrain"
    for name in ["base", "retrain", *methods]:
        evaluation = json.loads((out / f"t2i-{name}.json").read_text())
        assert evaluation["provenance"]["model"]["text_conditional"] is True
        assert evaluation["forget_rate_n"] == 2  # 20 samples over ten digits' prompts: two of the 8's
        assert (out / f"t2i-{name}.png").is_file() and (out / f"t2i-{name}-forget.png").is_file()
        if name != "base":
            assert (out / f"t2i-{name}-attacked.json").is_file() and (out / f"t2i-{name}-curve.json").is_file()
    comparison = json.loads((out / "comparison.json").read_text())
    assert [(s["label"], s["reference"]) for s in comparison["scenarios"]] == [
        ("digits (text-to-image) — forget class 8", "t2i-retrain")]


def test_a_rerun_of_a_text_scenario_reuses_every_stage(text_run, classifier_cache):
    toml, out, _ = text_run
    before = digests(out)
    result = subprocess.run(cli_command(toml, out), env=cli_env(classifier_cache), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    stages = json.loads((out / "experiment.json").read_text())["stages"]
    assert all(s["reused"] for s in stages[:-1]) and not stages[-1]["reused"]
    assert len(stages) == len(plan(parse(toml.read_text())))
    assert digests(out) == before
