"""CLI for train/sample/inspect/export/import: outputs, exit codes, one-line errors, no partial files."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from unlearnctl.checkpoint import load_checkpoint


def test_train_sample_inspect_export(cli, shapes_npz, tmp_path):
    out = tmp_path / "m.safetensors"
    result = cli("train", "--data", f"npz:{shapes_npz}", "--size", "tiny", "--steps", "20", "--batch-size", "16",
                 "--out", out, "--grid", tmp_path / "g.png", "-q")
    assert result.code == 0, result
    assert out.is_file() and (tmp_path / "g.png").is_file()
    result = cli("sample", "-m", out, "--out", tmp_path / "s.png", "--class", "box", "--per-class", "3", "--steps", "5",
                 "--npz", tmp_path / "s.npz", "-q")
    assert result.code == 0, result
    saved = np.load(tmp_path / "s.npz")
    assert saved["images"].shape == (3, 8, 8, 1) and saved["images"].dtype == np.uint8
    assert list(saved["labels"]) == [2, 2, 2]
    result = cli("inspect", out, "--json", "--verify")
    assert result.code == 0, result
    info = json.loads(result.out)
    assert info["verified"] and info["lineage"][0]["command"] == "train" and info["classes"][2] == "box"
    assert cli("export", "-m", out, "--diffusers-dir", tmp_path / "d").code == 0
    assert cli("import", tmp_path / "d", "--out", tmp_path / "back.safetensors", "--data", f"npz:{shapes_npz}").code == 0
    back = load_checkpoint(tmp_path / "back.safetensors")
    assert back.lineage[-1]["command"] == "import" and back.conditional


def test_exclude_class_trains_on_retain_only(cli, shapes_npz, tmp_path):
    out = tmp_path / "r.safetensors"
    assert cli("train", "--data", f"npz:{shapes_npz}", "--size", "tiny", "--steps", "2", "--exclude-class", "box",
               "--out", out, "-q").code == 0
    model = load_checkpoint(out)
    entry = model.lineage[0]
    assert entry["forget"]["class_ids"] == [2]
    table = model.state_dict["class_embedding.weight"]
    assert torch.equal(table[2], table[model.null_class]) and entry["unseen_classes_as_null"]
    assert not torch.equal(table[1], table[model.null_class])
    assert entry["params"]["num_train_images"] == entry["forget"]["num_retain"]


def test_inspect_verify_flags_weights_changed_outside_the_tool(tiny_conditional, tmp_path, cli):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(tiny_conditional.path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(tiny_conditional.path))
    tensors["conv_in.bias"] = tensors["conv_in.bias"] + 1
    save_file(tensors, str(tmp_path / "tampered.safetensors"), metadata=metadata)
    result = cli("inspect", tmp_path / "tampered.safetensors", "--verify")
    assert result.code == 2 and "outside" in result.err


BAD = [
    (["inspect", "missing.safetensors"], "does not exist"),
    (["train", "--out", "{tmp}/nodir/m.safetensors", "--steps", "1"], "does not exist"),
    (["train", "--out", "{tmp}/m.ckpt", "--steps", "1"], "must end in .safetensors"),
    (["train", "--out", "{tmp}/m.safetensors", "--data", "folder:{tmp}/none"], "does not exist"),
    (["train", "--out", "{tmp}/m.safetensors", "--size", "huge"], "unknown model size"),
    (["train", "--out", "{tmp}/m.safetensors", "--steps", "0"], "steps must be at least 1"),
    (["train", "--out", "{tmp}/m.safetensors", "--lr", "-1"], "learning rate"),
    (["train", "--out", "{tmp}/m.safetensors", "--exclude-class", "99", "--steps", "1"], "not in the data"),
    (["train", "--out", "{tmp}/m.safetensors", "--nonsense"], "No such option"),
    (["sample", "-m", "{model}", "--out", "{tmp}/s.png", "--class", "giraffe"], "not in the data"),
    (["sample", "-m", "{model}", "--out", "{tmp}/s.png", "--steps", "0"], "steps"),
    (["sample", "-m", "{model}", "--out", "{tmp}/s.png", "--sampler", "euler"], "unknown sampler"),
    (["sample", "-m", "{model}", "--out", "{tmp}/s.jpg"], "must end in .png"),
    (["sample", "-m", "{tmp}/model.pt", "--out", "{tmp}/s.png"], "pickle"),
    (["export", "-m", "{model}", "--diffusers-dir", "{tmp}/nodir/x/y"], "does not exist"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[:1] + [m]) for a, m in BAD])
def test_bad_input_exits_2_with_one_line_and_no_output(cli, tiny_conditional, tmp_path, args, message):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04pickle")
    before = set(tmp_path.iterdir())
    args = [a.format(tmp=tmp_path, model=tiny_conditional.path) for a in args]
    result = cli(*args)
    assert result.code == 2, result
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.err
    assert "Traceback" not in result.err
    assert set(tmp_path.iterdir()) == before


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; from unlearnctl.cli.app import run; run(['--help']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_version_prints_the_package_version(cli):
    import unlearnctl

    result = cli("--version")
    assert result.code == 0 and result.out.strip() == f"unlearnctl {unlearnctl.__version__}", result


def test_an_option_from_the_environment_is_announced_and_the_command_line_wins(cli, tmp_path, monkeypatch):
    from unlearnctl.checkpoint import load_checkpoint

    monkeypatch.setenv("UNLEARNCTL_TRAIN_STEPS", "2")
    monkeypatch.setenv("UNLEARNCTL_TRAIN_SIZE", "tiny")
    monkeypatch.setenv("UNLEARNCTL_VERSION", "1")  # not an option: must not print the version and exit
    result = cli("train", "--batch-size", "8", "--out", tmp_path / "a.safetensors")
    assert result.code == 0, result
    assert "note: --steps 2 (from $UNLEARNCTL_TRAIN_STEPS)" in result.err and "note: --size tiny" in result.err
    assert load_checkpoint(tmp_path / "a.safetensors").lineage[-1]["params"]["train"]["steps"] == 2
    result = cli("train", "--steps", "1", "--batch-size", "8", "--out", tmp_path / "b.safetensors")
    assert result.code == 0 and "UNLEARNCTL_TRAIN_STEPS" not in result.err, result
    assert load_checkpoint(tmp_path / "b.safetensors").lineage[-1]["params"]["train"]["steps"] == 1
