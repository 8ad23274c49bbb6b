"""Adding a method means adding its file: a method registered inside this test, and nowhere else, appears in
``unlearn --help``, in the demo's plan, in the benchmarks' method lists, and runs in the shared loop."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from unlearnctl.data import ForgetSpec

ROOT = Path(__file__).resolve().parents[2]

# GradDiff (open-unlearning's GradDiff adapted to diffusion): γ·(−L_f) + α·L_r — a complete method in a few lines.
GRADDIFF = textwrap.dedent('''
    from dataclasses import dataclass

    from unlearnctl.methods import register_method
    from unlearnctl.methods.base import Method, MethodConfig, param


    @dataclass
    class GradDiffConfig(MethodConfig):
        gamma: float = param(1.0, "GradDiff's gamma, weight of the negated forget loss.", flag="--graddiff-gamma")


    @register_method("graddiff-test")
    class GradDiff(Method):
        """GradDiff: gamma * (-L_f) + L_r."""

        Config = GradDiffConfig
        summary = "GradDiff (test): gamma * (-L_f) + L_r"

        def terms(self):
            return {"L_f": self.forget_loss(), "L_r": self.retain_loss()}

        def objective(self, terms):
            return -self.config.gamma * terms["L_f"] + terms["L_r"]
''')


@pytest.fixture
def graddiff(tmp_path, monkeypatch):
    """The method's file in a temporary folder, imported (registered) for this test only."""
    import importlib

    from unlearnctl.methods import unregister_method

    (tmp_path / "graddiff_plugin.py").write_text(GRADDIFF)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("graddiff_plugin")
    yield tmp_path
    unregister_method("graddiff-test")
    sys.modules.pop(module.__name__, None)


def test_a_registered_method_is_listed_everywhere(graddiff):
    from unlearnctl.demo import DemoConfig, plan
    from unlearnctl.methods import available_methods

    assert "graddiff-test" in available_methods(exact=False)
    assert "unlearn graddiff-test (graddiff-test)" in plan(DemoConfig(), "out")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert "graddiff-test" in common.fine_tuning_methods() and "graddiff-test" in common.all_methods()


def test_a_registered_method_is_in_unlearn_help(graddiff):
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import graddiff_plugin; "
            "from unlearnctl.cli.app import main; main()")
    result = subprocess.run([sys.executable, "-c", code, str(graddiff), "unlearn", "--help"], capture_output=True,
                            text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "graddiff-test" in result.stdout and "--graddiff-gamma" in result.stdout


def test_a_registered_method_runs_in_the_shared_loop(graddiff, tiny_conditional, shapes_split):
    from methods.common import check_basics

    _, report = check_basics(tiny_conditional, shapes_split, "graddiff-test", ForgetSpec(classes=("2",)), {"gamma": 0.5})
    assert {"L_f", "L_r"} <= report["final"].keys()


def test_flags_have_one_meaning():
    from unlearnctl.methods import method_options

    options = method_options()
    assert {"--salun-alpha", "--neggrad-alpha"} <= options.keys() and "--alpha" not in options
    assert options["--scaling-norm"].methods == ["siss", "siss-no-is"]  # shared, and meaning the same
    for option in options.values():
        assert option.describe().startswith(", ".join(option.methods) + ":")


def test_a_flag_with_two_meanings_is_refused(graddiff, tmp_path):
    from dataclasses import dataclass

    from unlearnctl.methods import method_options, register_method, unregister_method
    from unlearnctl.methods.base import Method, MethodConfig, param

    @dataclass
    class Clashing(MethodConfig):
        gamma: float = param(2.0, "another gamma", flag="--graddiff-gamma")

    @register_method("clash-test")
    class Clash(Method):
        """A method reusing GradDiff's flag with another meaning."""

        Config = Clashing

    try:
        with pytest.raises(ValueError, match="--graddiff-gamma of method .* means something else"):
            method_options()
    finally:
        unregister_method("clash-test")
