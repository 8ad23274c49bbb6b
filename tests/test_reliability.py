"""Nothing lost: atomic outputs under SIGKILL and Ctrl-C, bit-identical resume, NaN/Inf stops that keep
the last good state, and byte-identical reruns.

Subprocess tests run the real ``unlearnctl`` in a fresh process and stop it with real signals at seeded
random moments. Stopping a process with SIGSTOP freezes it exactly as SIGKILL would leave it, so one
writer process gives many "killed here" observations; each test then also SIGKILLs it for real.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reliability_common import UNLEARNCTL, error_lines, untrained_checkpoint
from unlearnctl.checkpoint import load_checkpoint, save_checkpoint
from unlearnctl.provenance import verify_checkpoint
from unlearnctl.resume import load_state

EPOCH = "1700000000"  # SOURCE_DATE_EPOCH: byte-identical files
TINY = ("--size", "tiny", "--batch-size", "8", "--device", "cpu", "--quiet", "--seed", "3")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_weights(a: Path, b: Path) -> bool:
    left, right = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def interrupt_at(monkeypatch, module: str, task: str, step: int) -> None:
    """Raise KeyboardInterrupt (what Ctrl-C raises) when ``task`` reports ``step``."""
    import importlib

    target = importlib.import_module(module)
    original = target.report

    def report(progress, name, done, total, **info):
        if name == task and done == step:
            raise KeyboardInterrupt
        return original(progress, name, done, total, **info)

    monkeypatch.setattr(target, "report", report)


@pytest.fixture
def reproducible(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


@pytest.fixture(scope="module")
def base(shapes_split, tmp_path_factory) -> Path:
    """An (untrained) tiny conditional model on the shapes data: the input of unlearn and relearn-attack."""
    path = tmp_path_factory.mktemp("reliability") / "base.safetensors"
    save_checkpoint(untrained_checkpoint(shapes_split), path)
    return path


# --------------------------------------------------------------------------------------------- determinism


def test_same_command_and_seed_give_the_same_file(cli, shapes_npz, tmp_path, reproducible):
    args = ("train", "--data", f"npz:{shapes_npz}", *TINY, "--steps", "4")
    for name in ("a", "b"):
        assert cli(*args, "--out", tmp_path / f"{name}.safetensors").code == 0
    assert sha256(tmp_path / "a.safetensors") == sha256(tmp_path / "b.safetensors")
    assert cli(*args, "--seed", "4", "--out", tmp_path / "c.safetensors").code == 0  # the seed matters
    assert not same_weights(tmp_path / "a.safetensors", tmp_path / "c.safetensors")


# --------------------------------------------------------------------------------------------- resume


def test_train_resume_is_bit_identical(cli, shapes_npz, tmp_path, monkeypatch, reproducible):
    args = ("train", "--data", f"npz:{shapes_npz}", *TINY, "--steps", "10")
    assert cli(*args, "--out", tmp_path / "whole.safetensors").code == 0

    out, state = tmp_path / "resumed.safetensors", tmp_path / "resumed.state.safetensors"
    with monkeypatch.context() as patch:
        interrupt_at(patch, "unlearnctl.training", "train", 7)
        result = cli(*args, "--checkpoint-every", "3", "--out", out)
    assert result.code == 130 and not out.exists(), result
    assert error_lines(result.err) == [f"error: interrupted; no output was written; resume from step 6 with --resume {state}"]
    assert load_state(state).step == 6

    changed = cli(*args, "--lr", "0.002", "--checkpoint-every", "3", "--resume", state, "--out", out)
    assert changed.code == 2 and "was saved with train.lr=0.001, this run has train.lr=0.002" in changed.err, changed
    assert cli(*args, "--checkpoint-every", "3", "--out", out).code == 2  # a fresh run would overwrite the state

    assert cli(*args, "--checkpoint-every", "3", "--resume", state, "--out", out).code == 0
    assert not state.exists()  # removed once the output is written
    assert sha256(out) == sha256(tmp_path / "whole.safetensors")


def test_unlearn_resume_is_bit_identical(cli, base, tmp_path, monkeypatch, reproducible):
    args = ("unlearn", "-m", base, "--method", "salun", "--forget-class", "box", "--steps", "5", "--batch-size", "8",
            "--device", "cpu", "--quiet")  # SalUn: its saliency masks are part of the state
    assert cli(*args, "--out", tmp_path / "whole.safetensors").code == 0
    out, state = tmp_path / "resumed.safetensors", tmp_path / "resumed.state.safetensors"
    with monkeypatch.context() as patch:
        interrupt_at(patch, "unlearnctl.unlearning", "unlearn", 4)
        assert cli(*args, "--checkpoint-every", "2", "--out", out).code == 130
    assert load_state(state).step == 2 and not out.exists()
    assert cli(*args, "--checkpoint-every", "2", "--resume", state, "--out", out).code == 0
    assert sha256(out) == sha256(tmp_path / "whole.safetensors")


def test_relearn_attack_resume_is_bit_identical_with_its_curve(cli, base, tmp_path, monkeypatch, reproducible):
    args = ("relearn-attack", "-m", base, "--aux", "retain", "--steps", "5", "--batch-size", "8", "--forget-index", "0",
            "--curve-every", "2", "--curve-samples", "4", "--curve-sample-steps", "2", "--device", "cpu", "--quiet")
    assert cli(*args, "--out", tmp_path / "whole.safetensors", "--curve-json", tmp_path / "whole.json").code == 0
    out, state = tmp_path / "resumed.safetensors", tmp_path / "resumed.state.safetensors"
    with monkeypatch.context() as patch:
        interrupt_at(patch, "unlearnctl.training", "relearn-attack", 5)
        assert cli(*args, "--checkpoint-every", "2", "--out", out).code == 130
    assert [p["step"] for p in load_state(state).state["curve"]["points"]] == [0, 2, 4]
    assert cli(*args, "--checkpoint-every", "2", "--resume", state, "--out", out, "--curve-json", tmp_path / "resumed.json").code == 0
    assert sha256(out) == sha256(tmp_path / "whole.safetensors")
    whole, resumed = (tmp_path / "whole.json").read_text(), (tmp_path / "resumed.json").read_text()
    assert resumed.replace("resumed.safetensors", "whole.safetensors") == whole


# --------------------------------------------------------------------------------------------- NaN / Inf


class NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def fault_in_loss(monkeypatch, call: int, kind: str) -> None:
    import unlearnctl.training as training

    original, calls = training.denoising_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        value = original(*args, **kwargs)
        if len(calls) == call:
            return value * float("nan") if kind == "loss" else NanGradient.apply(value)
        return value

    monkeypatch.setattr(training, "denoising_loss", loss)


def fault_in_weights(monkeypatch, call: int) -> None:
    original, calls = torch.optim.AdamW.step, []

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == call:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


@pytest.mark.parametrize("fault, message", [
    ("loss", "loss became nan in step 4"),
    ("gradient", "gradient norm became nan in step 4"),
    ("weights", "weight conv_in.weight became non-finite in step 4"),
])
def test_train_stops_on_nan_with_exit_1_and_keeps_the_last_good_weights(cli, shapes_npz, tmp_path, monkeypatch, reproducible,
                                                                      fault, message):
    """Steps 1-3 were good: the side file holds exactly what a 3-step run writes (the warm-up learning rate
    does not depend on the total number of steps), and nothing is written at the output path."""
    args = ("train", "--data", f"npz:{shapes_npz}", *TINY)
    assert cli(*args, "--steps", "3", "--out", tmp_path / "three.safetensors").code == 0
    out = tmp_path / "run.safetensors"
    with monkeypatch.context() as patch:
        if fault == "weights":
            fault_in_weights(patch, call=4)
        else:
            fault_in_loss(patch, call=4, kind=fault)
        result = cli(*args, "--steps", "8", "--checkpoint-every", "2", "--out", out)
    side, state = tmp_path / "run.last-good.safetensors", tmp_path / "run.state.safetensors"
    assert result.code == 1 and not out.exists(), result
    assert error_lines(result.err) == [
        f"error: {message}; lower --lr; no output was written; the last good weights (after step 3) are in {side}; "
        f"the last good resumable state (step 2) is {state}"]
    assert same_weights(side, tmp_path / "three.safetensors")
    entry = load_checkpoint(side).lineage[-1]
    assert entry["steps_run"] == 3 and message in entry["stopped"] and verify_checkpoint(load_checkpoint(side)) == []
    assert load_state(state).step == 2  # the periodic state was not overwritten with anything bad


def test_unlearn_stops_on_nan_and_keeps_the_last_good_weights(cli, base, tmp_path, monkeypatch, reproducible):
    import unlearnctl.methods.base as methods

    args = ("unlearn", "-m", base, "--method", "naive", "--forget-class", "box", "--batch-size", "8", "--device", "cpu", "--quiet",
            "--lr-schedule", "constant")  # the first two steps of a 5-step run then equal a 2-step run
    assert cli(*args, "--steps", "2", "--out", tmp_path / "two.safetensors").code == 0
    original, calls = methods.Method.retain_loss, []

    def retain_loss(self):
        calls.append(1)
        return original(self) * (float("nan") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(methods.Method, "retain_loss", retain_loss)
    result = cli(*args, "--steps", "5", "--out", tmp_path / "run.safetensors")
    side = tmp_path / "run.last-good.safetensors"
    assert result.code == 1 and not (tmp_path / "run.safetensors").exists(), result
    assert "became nan in step 3" in result.err and f"the last good weights (after step 2) are in {side}" in result.err
    assert len(error_lines(result.err)) == 1
    assert same_weights(side, tmp_path / "two.safetensors")
    assert load_checkpoint(side).lineage[-1]["parent_sha256"] == load_checkpoint(base).sha256


def test_a_model_with_nan_weights_leaves_no_side_file(cli, base, tmp_path, monkeypatch):
    """When the weights in memory are not finite there is no good state to keep: nothing is written.
    (A NaN weight in the input file is bad input instead: exit 2, tests/test_inputs.py.)"""
    fault_in_weights(monkeypatch, call=1)  # the first optimizer step leaves a NaN weight
    before = set(tmp_path.iterdir())
    result = cli("unlearn", "-m", base, "--method", "naive", "--forget-class", "box", "--steps", "2",
                 "--batch-size", "8", "--device", "cpu", "--quiet", "--out", tmp_path / "run.safetensors")
    assert result.code == 1 and "no output was written" in result.err and len(error_lines(result.err)) == 1, result
    assert set(tmp_path.iterdir()) == before


# --------------------------------------------------------------------------------------------- atomic writes


def test_a_failed_or_interrupted_write_leaves_the_old_file_and_no_temporary(base, tmp_path, monkeypatch):
    out = tmp_path / "m.safetensors"
    checkpoint = load_checkpoint(base)
    save_checkpoint(checkpoint, out)
    old = out.read_bytes()
    changed = checkpoint.derive({k: v + 1 for k, v in checkpoint.state_dict.items()}, {"command": "edit", "params": {}})
    for name, error in (("replace", OSError("disk full")), ("fsync", KeyboardInterrupt())):
        with monkeypatch.context() as patch:
            def fail(*args, **kwargs):
                raise error

            patch.setattr(os, name, fail)
            with pytest.raises(type(error)):
                save_checkpoint(changed, out)
        assert out.read_bytes() == old
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


WRITER = """
import sys
from unlearnctl.checkpoint import load_checkpoint, save_checkpoint
checkpoint = load_checkpoint(sys.argv[1])
for version in range(10**9):
    checkpoint.lineage[-1]["params"]["version"] = version
    checkpoint.state_dict["conv_in.bias"][0] = float(version)
    save_checkpoint(checkpoint, sys.argv[2])
"""


def stray_files(folder: Path, *outputs: Path) -> list[str]:
    """Files other than ``outputs`` and the documented leftovers of a killed run: ``.OUTPUT.*.tmp`` (a write cut
    short) and ``OUTPUT.lock`` (the output lock; the next run removes both)."""
    def allowed(p: Path) -> bool:
        return any(p == out or p.name == f"{out.name}.lock" or (p.name.startswith(f".{out.name}.") and p.name.endswith(".tmp"))
                   for out in outputs)

    return [p.name for p in folder.iterdir() if not allowed(p)]


def check_complete(out: Path) -> int | None:
    """``out`` is absent or a whole, verified checkpoint; returns the version it holds."""
    if not out.exists():
        return None
    checkpoint = load_checkpoint(out)
    assert verify_checkpoint(checkpoint) == []
    version = checkpoint.lineage[-1]["params"]["version"]
    assert float(checkpoint.state_dict["conv_in.bias"][0]) == float(version)
    return version


@pytest.mark.slow  # a fresh process imports torch: ~3 s idle, ~15 s on a loaded machine
def test_sigkill_during_writes_never_leaves_a_partial_file(base, tmp_path):
    rng = random.Random(11)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "m.safetensors"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(base), str(out)], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not out.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        versions = []
        for _ in range(25):  # frozen at a random instant = killed at that instant, as far as files go
            time.sleep(rng.uniform(0.0, 0.08))
            process.send_signal(signal.SIGSTOP)
            versions.append(check_complete(out))
            assert stray_files(folder, out) == []
            process.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.0, 0.08))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        versions.append(check_complete(out))
        assert stray_files(folder, out) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert len(set(versions)) > 3  # the writer really was overwriting the file while we looked


def _dead_pid() -> int:
    """The id of a process that has ended (a stale temporary file's writer)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.slow  # a fresh process imports torch: ~3 s idle, ~15 s on a loaded machine
def test_sigkill_mid_training_then_resume_gives_the_uninterrupted_result(cli, shapes_npz, tmp_path, reproducible):
    """Wherever the kill lands — between steps, inside a state write — the resumed run gives the uninterrupted
    result and leaves only its output. The run moves only while the test waits for its next state file (a new
    inode per atomic write), so it cannot finish before the kill however fast the machine is; the kill is
    sent while the run is stopped at a random instant; and a temporary file of a killed write is planted
    in any case, so the cleanup is checked whether or not this kill happened to cut a write."""
    rng = random.Random(5)
    args = ["train", "--data", f"npz:{shapes_npz}", *TINY, "--steps", "60", "--checkpoint-every", "3"]
    folder = tmp_path / "run"
    folder.mkdir()
    out, state = folder / "m.safetensors", folder / "m.state.safetensors"
    process = subprocess.Popen([*UNLEARNCTL, *args, "--out", str(out)], stderr=subprocess.PIPE,
                               env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH})
    steps_seen = []
    try:
        deadline = time.time() + 180
        while not state.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        process.send_signal(signal.SIGSTOP)
        for _ in range(6):
            assert not out.exists()
            steps_seen.append(load_state(state).step)  # always a whole, valid state
            assert stray_files(folder, state, out) == [], list(folder.iterdir())
            inode = state.stat().st_ino
            process.send_signal(signal.SIGCONT)
            while state.stat().st_ino == inode and process.poll() is None and time.time() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.01))  # stop somewhere in the next step or state write
            process.send_signal(signal.SIGSTOP)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert not out.exists() and stray_files(folder, state, out) == []
    killed_at = load_state(state).step
    assert killed_at % 3 == 0 and 3 <= steps_seen[0] < killed_at < 60, steps_seen
    (folder / f".{state.name}.{_dead_pid()}.k1ll3d00.tmp").write_bytes(b"a state write cut short")
    (folder / f".{out.name}.x7q2m9za.tmp").write_bytes(b"the older naming, without the writer's PID")

    # finish the killed run here, and run the same command uninterrupted: the same file, byte for byte
    assert cli(*args, "--resume", state, "--out", out).code == 0
    assert cli(*args, "--out", tmp_path / "whole.safetensors").code == 0
    assert sha256(out) == sha256(tmp_path / "whole.safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["m.safetensors"]


def _default_sigint() -> None:
    """Ctrl-C as in a terminal: a test run in the background (``make test &``) starts with SIGINT ignored, which
    the child would inherit (and Python then keeps ignoring it, like ``nohup``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow  # a fresh process imports torch: ~3 s idle, ~15 s on a loaded machine
def test_ctrl_c_exits_130_and_writes_no_output(shapes_npz, tmp_path):
    out, state = tmp_path / "m.safetensors", tmp_path / "m.state.safetensors"
    process = subprocess.Popen([*UNLEARNCTL, "train", "--data", f"npz:{shapes_npz}", *TINY, "--steps", "2000",
                                "--checkpoint-every", "2", "--out", str(out)], stderr=subprocess.PIPE, text=True,
                               preexec_fn=_default_sigint)
    try:
        deadline = time.time() + 180
        while not state.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: interrupted; no output was written; resume from step"), err
    assert f"--resume {state}" in lines[0] and "Traceback" not in err
    assert not out.exists() and load_state(state).step % 2 == 0
