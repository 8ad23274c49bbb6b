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


@pytest.fixture(scope="module")
def model_file(shapes_split, tmp_path_factory) -> Path:
    """A tiny conditional model (untrained: the refusals and locks tested here never look at its quality)."""
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_checkpoint(untrained_checkpoint(shapes_split), path)
    return path


@pytest.fixture(scope="module")
def exported_folder(shapes_split, tmp_path_factory) -> Path:
    from unlearnctl.checkpoint import export_diffusers

    return export_diffusers(untrained_checkpoint(shapes_split), tmp_path_factory.mktemp("export") / "exported")


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


def test_unlearn_of_a_model_with_nan_weights_names_the_tensor_not_the_learning_rate(cli, nan_model, tmp_path):
    line = refused(cli, tmp_path, "unlearn", "-m", nan_model, "--out", tmp_path / "u.safetensors", "--method", "naive",
                   "--forget-class", "bar", "--steps", "1", "--quiet", "--device", "cpu")
    assert "non-finite weights in tensor conv_in.bias" in line and "--lr" not in line


def test_compare_refuses_to_evaluate_a_model_with_nan_weights(cli, nan_model, tmp_path):
    line = refused(cli, tmp_path, "compare", nan_model, "--json", tmp_path / "c.json", "--num-samples", "8", "--quiet")
    assert f"model {nan_model} has non-finite weights in tensor conv_in.bias" in line


# --------------------------------------------------------------------------------------------- 11, 14: locks, temp files


def _hold_lock(out: Path):
    """Another process that claims ``out`` and waits; returns it once it holds the lock."""
    import subprocess
    import sys

    code = ("import sys, time; from unlearnctl.fileio import claim_output; claim_output(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_run_writing_the_same_out_exits_2_naming_the_first(cli, model_file, tmp_path):
    out = tmp_path / "u.safetensors"
    holder = _hold_lock(out)
    try:
        line = refused(cli, tmp_path, "unlearn", "-m", model_file, "--out", out, "--method", "naive",
                       "--forget-class", "bar", "--steps", "1", "--quiet", "--device", "cpu")
        assert f"--out {out} is being written by another unlearnctl run (process {holder.pid}, lock {out}.lock)" in line
        line = refused(cli, tmp_path, "relearn-attack", "-m", model_file, "--out", out, "--steps", "1", "--quiet")
        assert f"(process {holder.pid}," in line
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock file stays behind, stale; the next run takes it and removes it at the end
    assert (tmp_path / "u.safetensors.lock").exists()
    result = cli("unlearn", "-m", model_file, "--out", out, "--method", "naive", "--forget-class", "bar", "--steps", "1",
                 "--quiet", "--device", "cpu")
    assert result.code == 0, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.safetensors"]


def test_import_locks_its_output_too(cli, exported_folder, tmp_path):
    out = tmp_path / "i.safetensors"
    holder = _hold_lock(out)
    try:
        line = refused(cli, tmp_path, "import", exported_folder, "--out", out)
        assert f"(process {holder.pid}," in line
    finally:
        holder.kill()
        holder.wait()


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    import os
    import subprocess

    from unlearnctl.fileio import claim_output, release_output_locks, temp_file

    out, state = tmp_path / "m.safetensors", tmp_path / "m.state.safetensors"
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "600"])
    try:
        names = {"dead": f".{state.name}.{dead.pid}.ab12cd34.tmp", "live": f".{out.name}.{live.pid}.ab12cd34.tmp",
                 "old": f".{out.name}.x7q2m9za.tmp", "other": f".other.safetensors.{dead.pid}.ab12cd34.tmp"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        with temp_file(out) as handle:  # this process's own naming: .NAME.PID.XXXXXXXX.tmp
            assert Path(handle.name).name.startswith(f".{out.name}.{os.getpid()}.")
        claim_output(out, state)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted([names["live"], names["other"], "m.safetensors.lock"])
        assert (tmp_path / "m.safetensors.lock").read_text() == f"{os.getpid()}\n"
        release_output_locks()
        assert not (tmp_path / "m.safetensors.lock").exists()
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------------------------------- data as users give it


@pytest.fixture()
def numbered_folder(tmp_path) -> Path:
    """Class sub-folders named by numbers in an order where the first is not ``0``: 17, 2, 5, 9 (sorted: 17, 2, 5, 9)."""
    import numpy as np
    from PIL import Image

    from conftest import make_shapes

    images, labels = make_shapes(per_class=6)
    folder = tmp_path / "numbered"
    for name, kind in zip(("17", "2", "5", "9"), range(4)):
        (folder / name).mkdir(parents=True)
        for i, image in enumerate(images[labels == kind]):
            Image.fromarray(np.asarray(image)).save(folder / name / f"{i}.png")
    return folder


def test_class_naming_rule_never_reads_an_unnamed_number_as_an_index_among_numbered_classes():
    from unlearnctl.data import class_index
    from unlearnctl.errors import BadInputError

    numbered = ["17", "2", "5", "9"]
    assert class_index("2", numbered) == 1  # the class named 2, not the third class
    assert class_index("index:0", numbered) == 0
    with pytest.raises(BadInputError, match=r"class '0' is not in the data, whose class names are numbers: 17, 2, 5, 9; "
                                            r"a number means a class name here \(index:0 picks by position\)"):
        class_index("0", numbered)
    with pytest.raises(BadInputError, match=r"index:N needs 0 <= N < 4"):
        class_index("index:4", numbered)
    named = ["bar", "column", "box", "cross"]
    assert class_index("box", named) == class_index("2", named) == class_index("index:2", named) == 2
    with pytest.raises(BadInputError, match="class '4' is not in the data; classes are: bar, column, box, cross"):
        class_index("4", named)


def test_a_bare_folder_is_read_as_a_folder_and_recorded_as_folder_spec(numbered_folder, monkeypatch):
    from unlearnctl.data import load_data
    from unlearnctl.errors import BadInputError

    bare, spelled = load_data(str(numbered_folder)), load_data(f"folder:{numbered_folder}")
    assert bare.description == spelled.description and bare.description["source"] == f"folder:{numbered_folder}"
    assert bare.train.class_names == ["17", "2", "5", "9"]
    monkeypatch.chdir(numbered_folder.parent)
    (numbered_folder.parent / "digits").mkdir()
    with pytest.raises(BadInputError, match="names both the built-in data set and the folder ./digits; write folder:digits"):
        load_data("digits")


def test_sample_refuses_a_number_that_names_no_numbered_class(cli, numbered_folder, tmp_path):
    from unlearnctl.data import load_data

    model = tmp_path / "m.safetensors"
    save_checkpoint(untrained_checkpoint(load_data(str(numbered_folder))), model)
    line = refused(cli, tmp_path, "sample", "-m", model, "--out", tmp_path / "s.png", "--class", "0", "--device", "cpu")
    assert "class '0' is not in the data, whose class names are numbers: 17, 2, 5, 9" in line
    result = cli("sample", "-m", model, "--out", tmp_path / "s.png", "--class", "2", "--class", "index:0",
                 "--per-class", "1", "--steps", "1", "--device", "cpu", "--quiet")
    assert result.code == 0, result


def test_train_reads_a_bare_folder_and_notes_a_batch_larger_than_the_data(cli, numbered_folder, tmp_path):
    out = tmp_path / "m.safetensors"
    result = cli("train", "--data", numbered_folder, "--size", "tiny", "--steps", "1", "--batch-size", "64",
                 "--ema-decay", "0", "--device", "cpu", "--out", out)
    assert result.code == 0, result
    notes = [line for line in result.err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: --batch-size 64 is larger than the 19 training images; batches are drawn with "
                     "replacement, so images repeat within a step"], result.err
    from unlearnctl.checkpoint import load_checkpoint

    assert load_checkpoint(out).data["source"] == f"folder:{numbered_folder}"


def test_a_symlink_loop_in_a_data_folder_is_named_as_such(cli, numbered_folder, tmp_path):
    loop = numbered_folder / "2" / "loop.png"
    loop.symlink_to(loop)
    line = refused(cli, tmp_path, "train", "--data", numbered_folder, "--size", "tiny", "--steps", "1",
                   "--out", tmp_path / "m.safetensors")
    assert line == f"error: {loop} is a symbolic link that loops (a symlink cycle); remove it or point it at an image or class folder"


# --------------------------------------------------------------------------------------------- 8: whole messages


def test_a_weights_only_failure_is_one_whole_line_cause_first(tmp_path):
    import io

    import torch

    from unlearnctl.errors import BadInputError
    from unlearnctl.metrics.fidelity import inception_space

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1), "plan": Path("x")}, buffer)  # a pickled object: refused by weights-only loading
    (tmp_path / "inception.pth").write_bytes(buffer.getvalue())
    with pytest.raises(BadInputError) as info:
        inception_space(tmp_path / "inception.pth")
    message = str(info.value)
    assert "\n" not in message and "weights_only` set to `False`" not in message
    assert message.startswith(f"{tmp_path / 'inception.pth'} cannot be loaded as weights only: Unsupported global: GLOBAL pathlib.")
    assert message.endswith("was not an allowed global by default; give a weights-only .pth or a .safetensors file "
                            "(code-carrying pickles are refused)")


def test_cause_of_keeps_whole_sentences():
    from unlearnctl.errors import cause_of

    long = ValueError("First sentence names the cause. " + "Then a long explanation follows here. " * 10 + "\nSecond line.")
    assert cause_of(long) == "First sentence names the cause. Then a long explanation follows here. " \
                             "Then a long explanation follows here. Then a long explanation follows here. " \
                             "Then a long explanation follows here"
    assert cause_of(ValueError("x" * 300)) == "x" * 300  # one sentence is kept whole, however long
    assert cause_of(KeyError()) == "KeyError"
