"""Exact unlearning: the recipe is read from the lineage, the forget set is excluded, provenance holds."""

from __future__ import annotations

import pytest
import torch

from unlearnctl.checkpoint import save_checkpoint
from unlearnctl.data import ForgetSpec
from unlearnctl.errors import BadInputError
from unlearnctl.methods.retrain import training_recipe
from unlearnctl.provenance import verify_checkpoint
from methods.common import run


def test_retrains_from_scratch_with_the_recorded_recipe(tiny_conditional, shapes_split, tmp_path):
    model, report = run(tiny_conditional, shapes_split, "retrain", ForgetSpec(classes=("2",)), steps=4, batch_size=None)
    recipe = training_recipe(tiny_conditional)
    entry = model.lineage[-1]
    assert entry["command"] == "retrain" and entry["method"] == "retrain" and entry["steps_run"] == 4
    assert entry["parent_sha256"] == tiny_conditional.sha256  # names the base it replaces
    params = entry["params"]
    assert params["from_scratch"] and params["overrides"] == {"steps": 4}
    assert params["recipe"]["preset"] == recipe["preset"] == "tiny"
    assert params["train"]["batch_size"] == recipe["train"]["batch_size"] and params["train"]["lr"] == recipe["train"]["lr"]
    assert params["num_train_images"] == int((shapes_split.train.labels != 2).sum())  # class box excluded
    assert model.unet_config == tiny_conditional.unet_config
    assert not torch.equal(model.state_dict["conv_in.weight"], tiny_conditional.state_dict["conv_in.weight"])
    # the lineage is the base's history plus this entry, so `inspect --verify` accepts the file next to its base
    path = save_checkpoint(model, tmp_path / "retrained.safetensors")
    assert verify_checkpoint(model, search_dir=tiny_conditional.path.parent) == []
    assert path.exists() and report["steps_run"] == 4


def test_needs_a_recorded_recipe(tiny_conditional, shapes_split):
    from dataclasses import replace

    imported = replace(tiny_conditional, lineage=[{"command": "import", "params": {}}])
    with pytest.raises(BadInputError, match="no training recipe"):
        run(imported, shapes_split, "retrain", ForgetSpec(classes=("2",)), steps=2)
