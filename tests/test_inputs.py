"""Real models, real inputs (issue 17): broken weights, outputs on top of inputs, data that does not fit the
model, class names that look like indices, odd folders, concurrent runs and leftovers of killed writes.

Each refusal is checked the same way: exit 2, one line naming the problem, nothing written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from reliability_common import error_lines, untrained_checkpoint
from unlearnctl.checkpoint import save_checkpoint


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def refused(cli, folder: Path, *args) -> str:
    """Run ``args``; assert exit 2 with one error line and no change under ``folder``; return the line."""
    before = snapshot(folder)
    result = cli(*args)
    assert result.code == 2, result
    lines = error_lines(result.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert snapshot(folder) == before
    return " ".join(lines[0].split())


@pytest.fixture(scope="module")
def nan_model(shapes_split, tmp_path_factory) -> Path:
    """A tiny conditional model whose ``conv_in.bias[0]`` is NaN, saved like any checkpoint."""
    model = untrained_checkpoint(shapes_split)
    model.state_dict["conv_in.bias"][0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.safetensors"
    save_checkpoint(model, path)
    return path


# --------------------------------------------------------------------------------------------- 1, 2: finite weights


def test_require_finite_weights_names_the_first_broken_tensor_and_counts_its_values():
    import torch

    from unlearnctl.errors import BadInputError
    from unlearnctl.integrity import require_finite_weights

    weights = {"a": torch.zeros(3), "steps": torch.tensor([1, 2]), "b": torch.tensor([float("inf"), 0.0, float("nan")]),
               "c": torch.tensor([float("nan")])}
    with pytest.raises(BadInputError, match=r"^model m.safetensors has non-finite weights in tensor b \(2 NaN/Inf values\); "
                                            r"the file is broken — re-export or retrain it$"):
        require_finite_weights(weights, "m.safetensors")
    require_finite_weights({"a": torch.zeros(3), "steps": torch.tensor([1, 2])}, "m.safetensors")  # finite: no error


def test_a_gate_never_passes_on_a_model_with_nan_weights(cli, nan_model, tmp_path):
    line = refused(cli, tmp_path, "evaluate", "-m", nan_model, "--forget-class", "bar", "-n", "8", "--steps", "2",
                   "--gate", "forget_rate<=0.05", "--json", tmp_path / "r.json", "--device", "cpu")
    assert f"model {nan_model} has non-finite weights in tensor conv_in.bias" in line


def test_classifier_train_refuses_a_model_with_nan_weights(cli, nan_model, tmp_path):
    line = refused(cli, tmp_path, "classifier", "train", "-m", nan_model, "--out", tmp_path / "c.safetensors")
    assert "non-finite weights in tensor conv_in.bias" in line


@pytest.mark.xfail(strict=True, reason="needs the lead's one-line change in cli/unlearn_cmds.py: "
                                       "checkpoint = opt.load_model(model)")
def test_unlearn_of_a_model_with_nan_weights_names_the_tensor_not_the_learning_rate(cli, nan_model, tmp_path):
    line = refused(cli, tmp_path, "unlearn", "-m", nan_model, "--out", tmp_path / "u.safetensors", "--method", "naive",
                   "--forget-class", "bar", "--steps", "1", "--quiet", "--device", "cpu")
    assert "non-finite weights in tensor conv_in.bias" in line and "--lr" not in line


def test_compare_refuses_to_evaluate_a_model_with_nan_weights(cli, nan_model, tmp_path):
    line = refused(cli, tmp_path, "compare", nan_model, "--json", tmp_path / "c.json", "--num-samples", "8", "--quiet")
    assert f"model {nan_model} has non-finite weights in tensor conv_in.bias" in line
