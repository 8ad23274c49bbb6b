"""``unlearnctl evaluate`` and ``unlearnctl classifier train`` through the CLI: outputs and exit codes."""

from __future__ import annotations

import json

import pytest

FAST = ("-n", "40", "--steps", "6", "--audit-repeats", "1", "--audit-timesteps", "50,200", "--quiet")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNLEARNCTL_CACHE", str(tmp_path_factory.getbasetemp() / "classifier-cache"))


def test_evaluate_writes_table_json_grid_and_passes_gates(cli, tiny_conditional, tmp_path):
    out = tmp_path / "eval.json"
    result = cli("evaluate", "--model", tiny_conditional.path, "--forget-class", "2", *FAST, "--json", out,
                 "--grid", tmp_path / "grid.png", "--gate", "forget_rate<=1", "--gate", "fid>=0")
    assert result.code == 0, result
    assert "forget_rate" in result.out and "membership_auc" in result.out
    data = json.loads(out.read_text())
    assert data["schema"] == "unlearnctl.evaluate/1" and data["provenance"]["forget"]["class_ids"] == [2]
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "grid-forget.png").is_file()


def test_failed_gate_exits_3_and_still_writes_json(cli, tiny_conditional, tmp_path):
    out = tmp_path / "eval.json"
    result = cli("evaluate", "--model", tiny_conditional.path, "--forget-class", "2", *FAST, "--metric", "forget",
                 "--json", out, "--gate", "forget_rate<=0.05", "--gate", "forget_rate>=0")
    assert result.code == 3, result
    assert "gate failed: forget_rate<=0.05" in result.err and "forget_rate>=0" not in result.err
    assert json.loads(out.read_text())["forget_rate"] > 0.05


def test_relative_gate_against_baseline(cli, tiny_conditional, tmp_path):
    base = tmp_path / "base.json"
    assert cli("evaluate", "--model", tiny_conditional.path, *FAST, "--metric", "quality", "--json", base).code == 0
    fid = json.loads(base.read_text())["fid"]
    same = cli("evaluate", "--model", tiny_conditional.path, *FAST, "--metric", "quality", "--baseline", base,
               "--gate", "fid<=+0.1%")
    assert same.code == 0, same
    worse = cli("evaluate", "--model", tiny_conditional.path, *FAST, "--metric", "quality", "--baseline", base,
                "--gate", "fid<=-50%")
    assert worse.code == 3 and f"baseline {fid:.6g} -50%" in worse.err


@pytest.mark.parametrize("args, message", [
    (("--gate", "fid=<12"), "is not NAME OP VALUE"),
    (("--gate", "fid<=10%"), "needs a sign"),
    (("--gate", "fdi<=12"), "unknown metric 'fdi'"),
    (("--gate", "fid<=+10%"), "pass --baseline"),
    (("--feature-extractor", "inception-v3-compat"), "needs --inception-weights"),
    (("--feature-extractor", "clip"), "unknown feature extractor"),
    (("--metric", "membership"), "'membership' cannot be computed here: no forget set"),
    (("--forget-class", "9"), "class '9' is not in the data"),
    (("--audit-timesteps", "50,x"), "comma-separated integers"),
    (("--audit-samples", "0"), "audit samples must be at least 1"),
    (("--bootstrap-rounds", "0"), "bootstrap rounds must be at least 1"),
    (("--sample-batch-size", "0"), "sample batch size must be at least 1"),
    (("--json", "out.txt"), "must end in .json"),
])
def test_bad_input_exits_2_with_one_line(cli, tiny_conditional, args, message):
    result = cli("evaluate", "--model", tiny_conditional.path, *FAST, *args)
    assert result.code == 2, result
    assert message in result.err and len(result.err.strip().splitlines()) == 1


def test_inception_weights_that_are_not_inception_exit_2(cli, tiny_conditional, tmp_path):
    import torch

    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, weights)
    result = cli("evaluate", "--model", tiny_conditional.path, *FAST, "--feature-extractor", "inception-v3-compat",
                 "--inception-weights", weights)
    assert result.code == 2 and "not torch-fidelity InceptionV3 weights" in result.err


def test_classifier_train_reports_heldout_accuracy(cli, tiny_conditional, tmp_path):
    first = cli("classifier", "train", "--model", tiny_conditional.path, "--json", "-q", "--out", tmp_path / "clf.safetensors")
    assert first.code == 0, first
    info = json.loads(first.out)
    assert info["heldout_accuracy"] > 0.9 and len(info["classes"]) == 4
    assert (tmp_path / "clf.safetensors").is_file()
    again = cli("classifier", "train", "--model", tiny_conditional.path, "--json", "-q")
    assert json.loads(again.out)["cached"] is True and json.loads(again.out)["sha256"] == info["sha256"]
    assert cli("classifier", "train", "--model", tiny_conditional.path, "--data", "digits").code == 2
