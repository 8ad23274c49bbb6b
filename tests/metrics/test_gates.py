"""``--gate`` parsing and checking."""

from __future__ import annotations

import json

import pytest

from unlearnctl.errors import BadInputError
from unlearnctl.metrics.gates import Gate, check_gates, load_baseline, parse_gate, parse_gates

KNOWN = {"fid", "forget_rate", "retain_accuracy", "kid"}


@pytest.mark.parametrize("text, expected", [
    ("fid<=12", Gate("fid<=12", "fid", "<=", 12.0)),
    (" forget_rate <= 0.05 ", Gate("forget_rate <= 0.05", "forget_rate", "<=", 0.05)),
    ("retain_accuracy>=0.9", Gate("retain_accuracy>=0.9", "retain_accuracy", ">=", 0.9)),
    ("kid<1e-3", Gate("kid<1e-3", "kid", "<", 0.001)),
    ("fid>-1", Gate("fid>-1", "fid", ">", -1.0)),
    ("forget_rate==0", Gate("forget_rate==0", "forget_rate", "==", 0.0)),
    ("fid<=+10%", Gate("fid<=+10%", "fid", "<=", 10.0, relative=True)),
    ("retain_accuracy>=-5%", Gate("retain_accuracy>=-5%", "retain_accuracy", ">=", -5.0, relative=True)),
    ("fid<=+2.5%", Gate("fid<=+2.5%", "fid", "<=", 2.5, relative=True)),
])
def test_parse(text, expected):
    assert parse_gate(text) == expected


@pytest.mark.parametrize("text", ["fid", "fid<", "fid=<12", "fid<=twelve", "fid<=10%", "<=3", "fid<=12 13",
                                  "fid<=nan", "fid<=inf", "fid=12", "f-id<=1", "fid<=+%"])
def test_bad_syntax_is_bad_input(text):
    with pytest.raises(BadInputError):
        parse_gate(text)


def test_names_and_baselines_are_checked_up_front():
    with pytest.raises(BadInputError, match="unknown metric 'fdi'"):
        parse_gates(["fdi<=3"], KNOWN)
    with pytest.raises(BadInputError, match="--baseline"):
        parse_gates(["fid<=+10%"], KNOWN)
    with pytest.raises(BadInputError, match="no number for 'fid'"):
        parse_gates(["fid<=+10%"], KNOWN, baseline={"fid": None})
    assert len(parse_gates(["fid<=+10%", "kid<1"], KNOWN, baseline={"fid": 10.0})) == 2


def test_absolute_and_relative_checks():
    result = {"fid": 10.9, "forget_rate": 0.06, "retain_accuracy": 0.93, "kid": -0.002}
    baseline = {"fid": 10.0, "retain_accuracy": 1.0, "kid": -0.001}
    gates = parse_gates(["fid<=+10%", "forget_rate<=0.05", "retain_accuracy>=-5%", "kid<=+10%", "fid>10"], KNOWN, baseline)
    failures = check_gates(gates, result, baseline)
    assert len(failures) == 2
    assert failures[0].startswith("forget_rate<=0.05: forget_rate = 0.06, not <= 0.05")
    assert "retain_accuracy = 0.93, not >= 0.95" in failures[1] and "baseline 1 -5%" in failures[1]
    # +p% is relative to the magnitude: a negative baseline still loosens upwards
    assert gates[3].threshold(baseline) == pytest.approx(-0.0009)
    assert check_gates(parse_gates(["fid<=+10%"], KNOWN, baseline), {"fid": 11.0}, baseline) == []
    assert check_gates(parse_gates(["fid<=+10%"], KNOWN, baseline), {"fid": 11.01}, baseline) != []


def test_unmeasured_metric_fails_the_gate():
    (failure,) = check_gates([parse_gate("fid<=12")], {"fid": None})
    assert "not measured" in failure
    unsupported = {"membership_tpr_at_1pct_fpr": None, "membership_tpr_at_1pct_fpr_unsupported_reason": "21 non-members ..."}
    (failure,) = check_gates([parse_gate("membership_tpr_at_1pct_fpr<=0.1")], unsupported)
    assert "not measured (21 non-members ...)" in failure  # an unsupported figure never passes a gate


def test_load_baseline(tmp_path):
    good = tmp_path / "base.json"
    good.write_text(json.dumps({"fid": 3.0}))
    assert load_baseline(good) == {"fid": 3.0}
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "list.json").write_text("[1]")
    for name in ("bad.json", "list.json", "missing.json"):
        with pytest.raises(BadInputError):
            load_baseline(tmp_path / name)
