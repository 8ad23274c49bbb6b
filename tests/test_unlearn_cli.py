"""``unlearnctl unlearn``: exit codes, the output file and its lineage, probes, NaN handling."""

from __future__ import annotations

import json

from unlearnctl.checkpoint import load_checkpoint, save_checkpoint

FAST = ("--batch-size", "8", "--device", "cpu", "--quiet")


def test_unlearn_writes_a_checkpoint_with_its_lineage(cli, tiny_conditional, tmp_path):
    out = tmp_path / "siss.safetensors"
    result = cli("unlearn", "--model", tiny_conditional.path, "--method", "siss", "--forget-class", "2", "--steps", "2",
                 "--lambda", "0.4", "--scaling-norm", "0.05", "--out", out, *FAST)
    assert result.code == 0, result
    assert "wrote" in result.out
    model = load_checkpoint(out)
    entry = model.lineage[-1]
    assert entry["command"] == "unlearn" and entry["method"] == "siss" and entry["steps_run"] == 2
    from unlearnctl.methods.siss import SISS, SISSConfig

    assert entry["params"]["method_params"] == SISSConfig(lambda_=0.4, scaling_norm=0.05).to_dict()
    assert entry["params"]["batch_size"] == 8 and entry["seed"] == 0
    assert entry["params"]["lr_schedule"] == SISS.defaults["lr_schedule"] and entry["params"]["ema_decay"] == SISS.defaults["ema_decay"]
    assert entry["forget"]["spec"]["classes"] == ["2"] and entry["forget"]["mode"] == "class"
    assert entry["parent_sha256"] == tiny_conditional.sha256 and entry["wall_time_s"] is not None


def test_json_report_and_data_probes(cli, tiny_unconditional, tmp_path):
    out = tmp_path / "dimum.safetensors"
    result = cli("unlearn", "--model", tiny_unconditional.path, "--method", "dimum", "--forget-index", "3", "--forget-index", "4",
                 "--steps", "2", "--probe-every", "1", "--probe-samples", "4", "--probe-steps", "2", "--json", "--out", out, *FAST)
    assert result.code == 0, result
    report = json.loads(result.out)
    assert report["steps_run"] == 2 and [p["step"] for p in report["probes"]] == [0, 1, 2]
    assert report["prepared"]["alternative"] == "nearest-retain" and report["sha256"] == load_checkpoint(out).sha256


def test_until_forget_rate_stops_at_the_first_probe_that_reaches_it(cli, tiny_unconditional, tmp_path):
    out = tmp_path / "early.safetensors"
    result = cli("unlearn", "--model", tiny_unconditional.path, "--method", "naive", "--forget-index", "3", "--steps", "5",
                 "--until-forget-rate", "1.0", "--probe-samples", "4", "--probe-steps", "2", "--json", "--out", out, *FAST)
    assert result.code == 0, result
    report = json.loads(result.out)
    assert report["steps_run"] == 0 and report["stopped"].startswith("forget rate")  # any rate is <= 1.0
    entry = load_checkpoint(out).lineage[-1]
    assert entry["stopped"] == report["stopped"] and entry["until"] == report["until"]
    until = report["until"]
    assert until["reached"] and until["step"] == 0 and until["target"] == 1.0 and until["stop_on"] == "rate"
    assert until["forget_rate_n"] == 4 and until["forget_rate"] == until["forget_rate_count"] / 4
    assert until["forget_rate_ci95_low"] <= until["forget_rate"] <= until["forget_rate_ci95_high"]
    assert f"({until['forget_rate_count']}/4, 95% CI" in report["stopped"]


def test_bad_input_exits_2_without_output(cli, tiny_conditional, tmp_path):
    out = tmp_path / "bad.safetensors"
    base = ("unlearn", "--model", tiny_conditional.path, "--out", out, *FAST)
    for args, message in [
        (("--method", "sis", "--forget-class", "2"), "unknown method 'sis'"),
        (("--method", "siss", "--forget-class", "2", "--eta", "0.1"), "--eta is not a parameter of siss"),
        (("--method", "siss"), "the forget set is empty"),
        (("--method", "siss", "--forget-class", "hexagon"), "class 'hexagon' is not in the data"),
        (("--method", "siss", "--forget-class", "2", "--lambda", "1.5"), "λ must be strictly between 0 and 1"),
        (("--method", "naive", "--forget-class", "2", "--lr-schedule", "step"), "lr schedule must be one of"),
        (("--method", "naive", "--forget-class", "2", "--ema-decay", "1"), "EMA decay must be in [0, 1)"),
        (("--method", "retrain", "--forget-class", "2", "--ema-decay", "0.9"), "retrain repeats the base's recipe"),
        (("--method", "siss", "--forget-class", "0", "--forget-class", "1", "--forget-class", "2",
          "--forget-class", "3"), "whole training set"),
    ]:
        result = cli(*base, *args)
        assert result.code == 2, (args, result)
        assert message in " ".join(result.err.split()), (message, result.err)
        assert not out.exists()


def test_nan_loss_exits_1_and_writes_nothing(cli, tiny_conditional, tmp_path, monkeypatch):
    # A loss that turns NaN during the run (a finite model: broken input files are exit 2, tests/test_inputs.py)
    from unlearnctl.methods.naive import Naive

    original = Naive.terms
    monkeypatch.setattr(Naive, "terms", lambda self: {k: v * float("nan") for k, v in original(self).items()})
    out = tmp_path / "nan.safetensors"
    result = cli("unlearn", "--model", tiny_conditional.path, "--method", "naive", "--forget-class", "2",
                 "--steps", "2", "--out", out, *FAST)
    assert result.code == 1, result
    assert "nan" in result.err and "no output was written" in result.err
    assert not out.exists()


def test_help_lists_methods_and_their_parameters(cli):
    result = cli("unlearn", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())
    for name in ("siss-no-is", "erasediff", "dimum", "salun", "neggrad", "naive", "retrain"):
        assert name in text
    for flag in ("--lambda", "--scaling-norm", "--eta", "--forget-target", "--beta", "--alternative", "--saliency-percent",
                 "--salun-alpha", "--neggrad-alpha", "--max-forget-loss", "--probe-every", "--until-forget-rate"):
        assert flag in text
