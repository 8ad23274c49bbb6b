"""Multi-process runs (accelerate): the data-parallel split is exact, files are written once.

The launch test starts ``unlearn`` under ``accelerate launch`` with 2 CPU processes (gloo) and checks that
the weights equal a single-process run with the same global batch, to float tolerance.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearnctl import distributed
from unlearnctl.errors import BadInputError


def test_shard_takes_this_process_rows_of_a_global_draw():
    shard = distributed.Shard(rank=1, world=3)
    assert shard.global_size(4) == 12
    rows = torch.arange(12)
    assert shard.take(rows).tolist() == [4, 5, 6, 7]
    assert shard.take(None) is None
    parts = [distributed.Shard(r, 3).take(rows) for r in range(3)]
    assert torch.equal(torch.cat(parts), rows)  # the shares tile the global batch in order


def test_single_process_is_untouched():
    assert distributed.world_size() == 1 and distributed.is_main_process()
    shard = distributed.shard_for(batch_size=7)  # any batch: nothing is split
    assert shard.world == 1 and shard == distributed.Shard()
    assert distributed.sample_rows(10) == (0, 10)
    grads = [torch.ones(3)]
    assert distributed.all_reduce_mean(grads) is grads


def test_batch_must_split_evenly_over_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(BadInputError, match="batch size 64 must be divisible by the number of processes .3.; use --batch-size 63"):
        distributed.shard_for(batch_size=64)


def test_sample_shares_cover_all_images_in_order(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(distributed.sample_rows(10))
    assert shares == [(0, 3), (3, 6), (6, 10)]


def test_only_the_main_process_writes(monkeypatch, tmp_path):
    from unlearnctl.checkpoint import atomic_write_text

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    atomic_write_text(tmp_path / "a.txt", "x")
    assert not (tmp_path / "a.txt").exists()
    monkeypatch.setenv("RANK", "0")
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh processes import torch and diffusers: ~15 s idle, ~40 s on a loaded machine
def test_two_cpu_processes_match_one_process(tiny_conditional, tmp_path, cli):
    """``accelerate launch`` 2 processes × 8 images = one process × 16 images, step for step."""
    import json

    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists():
        pytest.skip("the accelerate launcher is not installed in this environment")
    common = ["unlearn", "--model", str(tiny_conditional.path), "--method", "siss", "--forget-class", "bar",
              "--steps", "3", "--batch-size", "16", "--calibration-batches", "1", "--device", "cpu", "-q", "--json"]
    single = cli(*common, "--out", str(tmp_path / "single.safetensors"))
    assert single.code == 0, single.err

    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    launch = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
              "-m", "unlearnctl", *common, "--out", str(tmp_path / "two.safetensors")]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single.safetensors", "two.safetensors"]  # written once
    assert done.stdout.count('"method": "siss"') == 1  # one report: only the main process prints

    # The step's figures come from the all-reduced gradients and the global batch: equal to float precision.
    one_report, two_report = json.loads(single.out), json.loads(done.stdout)
    assert two_report["prepared"]["scaling_norm"] == pytest.approx(one_report["prepared"]["scaling_norm"], rel=1e-6)
    for key, value in one_report["final"].items():
        assert two_report["final"][key] == pytest.approx(value, rel=1e-4, abs=1e-7), key

    # The weights: Adam divides each gradient entry by its own running norm, so entries whose gradient is
    # float noise (e.g. attention key biases, analytically zero) may move by up to lr per step in either
    # run. Hence: nearly every entry equal, and the difference tiny next to how far the weights moved.
    one, two = load_file(tmp_path / "single.safetensors"), load_file(tmp_path / "two.safetensors")
    base = tiny_conditional.state_dict
    assert one.keys() == two.keys()
    floats = [k for k in one if one[k].is_floating_point()]
    moved = torch.cat([(one[k] - base[k]).flatten() for k in floats])
    diff = torch.cat([(two[k] - one[k]).flatten() for k in floats])
    assert moved.norm() > 1e-4  # the steps did change the weights, so the agreement is not trivial
    assert diff.norm() <= 1e-2 * moved.norm()
    assert (diff.abs() <= 1e-6).float().mean() >= 0.999

    from unlearnctl.checkpoint import load_checkpoint

    entry = load_checkpoint(tmp_path / "two.safetensors").lineage[-1]
    assert entry["params"]["processes"] == 2 and entry["params"]["batch_size"] == 16
