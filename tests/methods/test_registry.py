"""The method registry: names, lookups, configs, and that it stays torch-free for the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unlearnctl.errors import BadInputError
from unlearnctl.methods import available_methods, get_method
from unlearnctl.methods.base import Method, MethodConfig
from unlearnctl.unlearning import LR_SCHEDULES

ALL = available_methods()  # the registry is the only list of methods
PAPER_METHODS = ["siss", "siss-no-is", "erasediff", "dimum", "salun", "neggrad", "naive", "retrain"]


def test_every_method_is_registered():
    listed = available_methods()
    assert [name for name in listed if name in PAPER_METHODS] == PAPER_METHODS  # present, in listing order


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(BadInputError, match="unknown method 'sis'.*siss, siss-no-is, erasediff"):
        get_method("sis")


@pytest.mark.parametrize("name", ALL)
def test_method_class_is_complete(name):
    cls = get_method(name)
    assert issubclass(cls, Method) and cls.name == name and cls.summary and cls.__doc__
    assert issubclass(cls.Config, MethodConfig)
    config = cls.Config()  # the defaults are valid
    assert cls.Config.from_dict(config.to_dict()) == config  # round trip
    for info in cls.Config.options():
        assert info.help and info.flag.startswith("--")
    assert cls.exact or all(isinstance(cls.defaults[k], (int, float)) for k in ("steps", "lr", "batch_size", "ema_decay"))
    assert cls.exact or cls.defaults["lr_schedule"] in LR_SCHEDULES


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(BadInputError, match="'beta' is not a parameter of method siss; its parameters are: .*lambda_"):
        get_method("siss").Config.from_dict({"beta": 1.0}, "siss")


def test_registry_and_cli_do_not_import_torch():
    code = "import sys, unlearnctl.methods, unlearnctl.cli.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
