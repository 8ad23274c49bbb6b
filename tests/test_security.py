"""Untrusted files: nothing is executed, every header is validated before any tensor byte is read, and
``inspect --verify`` checks the weights, the metadata and the lineage chain."""

from __future__ import annotations

import json
import pickle
import struct
import time
from pathlib import Path

import pytest
import torch

from reliability_common import build_file, error_lines, split_file, untrained_checkpoint
from unlearnctl.checkpoint import (
    MAX_HEADER_BYTES, Checkpoint, load_checkpoint, metadata_integrity, save_checkpoint, serialize, weights_sha256,
)
from unlearnctl.errors import BadInputError
from unlearnctl.provenance import verify_checkpoint


class Payload:
    """Unpickling this creates ``marker``: the proof that a loader executed code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def model(shapes_split, tmp_path_factory) -> Checkpoint:
    checkpoint = untrained_checkpoint(shapes_split)
    save_checkpoint(checkpoint, tmp_path_factory.mktemp("security") / "model.safetensors")
    return checkpoint


# --------------------------------------------------------------------------------------------- no code runs


def test_pickle_payloads_are_never_executed(model, tmp_path, cli):
    from unlearnctl.checkpoint import import_diffusers
    from unlearnctl.resume import load_state

    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": Payload(marker)})
    (tmp_path / "evil.pt").write_bytes(payload)
    (tmp_path / "raw-pickle.safetensors").write_bytes(payload)
    torch.save({"w": Payload(marker)}, tmp_path / "torch-zip.safetensors")  # torch.save's zip, renamed
    assert not marker.exists()  # saving pickles the payload, it does not run it
    for name in ("evil.pt", "raw-pickle.safetensors", "torch-zip.safetensors"):
        with pytest.raises(BadInputError, match="pickle"):
            load_checkpoint(tmp_path / name)
        with pytest.raises(BadInputError, match="pickle"):
            load_state(tmp_path / name)
        result = cli("inspect", tmp_path / name)
        assert result.code == 2 and len(error_lines(result.err)) == 1 and "pickle" in result.err, result
    folder = tmp_path / "diffusers" / "unet"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(model.unet_config))
    (folder / "diffusion_pytorch_model.bin").write_bytes(payload)
    with pytest.raises(BadInputError, match="pickle"):
        import_diffusers(tmp_path / "diffusers", {})
    from unlearnctl.metrics.fidelity import inception_space

    with pytest.raises(BadInputError, match="code-carrying pickles are refused"):  # evaluate --inception-weights
        inception_space(tmp_path / "evil.pt")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------- headers


def edit_header(raw: bytes, edit) -> bytes:
    header, data = split_file(raw)
    edit(header)
    return build_file(header, data)


def first_tensor(header: dict) -> str:
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def set_meta(key: str, value):
    def edit(header):
        header["__metadata__"][key] = value if isinstance(value, str) else json.dumps(value)
    return edit


def edit_meta_json(key: str, change):
    def edit(header):
        parsed = json.loads(header["__metadata__"][key])
        change(parsed)
        header["__metadata__"][key] = json.dumps(parsed)
    return edit


def set_tensor(field: str, value):
    def edit(header):
        header[first_tensor(header)][field] = value
    return edit


def many_tensors(header):
    for i in range(100_001):
        header[f"t{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}


HEADER_CASES = {
    "not json": (lambda raw: build_file(b"{not json" + b" " * 7, split_file(raw)[1]), "header is not JSON"),
    "not utf-8": (lambda raw: build_file(b'{"\xff\xfe": 1}', split_file(raw)[1]), "header is not JSON"),
    "json array": (lambda raw: build_file(b"[]", split_file(raw)[1]), "not an object"),
    "deep nesting": (lambda raw: build_file(b"[" * 100_000 + b"]" * 100_000, b""), "header is not JSON"),
    "5000-digit int": (lambda raw: edit_header(raw, set_tensor("shape", 0)).replace(b'"shape":0', b'"shape":[' + b"9" * 5000 + b"]"), "header is not JSON"),
    "length beyond file": (lambda raw: struct.pack("<Q", len(raw)) + raw[8:], "bad header size"),
    "length 2**64-1": (lambda raw: struct.pack("<Q", 2**64 - 1) + raw[8:], "bad header size"),
    "metadata not strings": (lambda raw: edit_header(raw, lambda h: h["__metadata__"].update(format=1)), "map strings to strings"),
    "unknown dtype": (lambda raw: edit_header(raw, set_tensor("dtype", "F8_E4M3")), "unsupported dtype"),
    "dtype not a string": (lambda raw: edit_header(raw, set_tensor("dtype", ["F32"])), "unsupported dtype"),
    "rank 9": (lambda raw: edit_header(raw, set_tensor("shape", [1] * 9)), "bad shape"),
    "negative dim": (lambda raw: edit_header(raw, set_tensor("shape", [-4])), "bad shape"),
    "float dim": (lambda raw: edit_header(raw, set_tensor("shape", [4.0])), "bad shape"),
    "bool dim": (lambda raw: edit_header(raw, set_tensor("shape", [True])), "bad shape"),
    "size mismatch": (lambda raw: edit_header(raw, set_tensor("shape", [10**6])), "does not match|outside"),
    "offsets beyond file": (lambda raw: edit_header(raw, set_tensor("data_offsets", [0, 10**12])), "outside the file"),
    "offsets reversed": (lambda raw: edit_header(raw, set_tensor("data_offsets", [8, 0])), "outside the file"),
    "offsets floats": (lambda raw: edit_header(raw, set_tensor("data_offsets", [0.0, 4.0])), "bad offsets"),
    "extra entry key": (lambda raw: edit_header(raw, set_tensor("code", "import os")), "exactly dtype"),
    "overlapping tensors": (lambda raw: _overlap(raw), "overlapping"),
    "gap between tensors": (lambda raw: _gap(raw), "unindexed bytes"),
    "trailing bytes": (lambda raw: raw + b"\0" * 64, "after the last tensor"),
    "100,001 tensors": (lambda raw: edit_header(raw, many_tensors), "more than 100000 tensors"),
    "no metadata": (lambda raw: edit_header(raw, lambda h: h.pop("__metadata__")), "no unlearnctl metadata"),
    "missing lineage": (lambda raw: edit_header(raw, lambda h: h["__metadata__"].pop("lineage")), "lacks metadata lineage"),
    "other format": (lambda raw: edit_header(raw, set_meta("format", "someone-else")), "not an unlearnctl checkpoint"),
    "future version": (lambda raw: edit_header(raw, set_meta("format_version", "2")), "format version '2'; this unlearnctl reads version 1"),
    "resume state": (lambda raw: edit_header(raw, set_meta("format", "unlearnctl-state")), "pass it to --resume"),
    "config not json": (lambda raw: edit_header(raw, set_meta("unet_config", "{")), "corrupt metadata 'unet_config'"),
    "config deep nesting": (lambda raw: edit_header(raw, set_meta("unet_config", "[" * 100_000 + "]" * 100_000)), "corrupt metadata 'unet_config'"),
    "lineage not a list": (lambda raw: edit_header(raw, set_meta("lineage", {"command": "train"})), "not a list"),
    "lineage entry a string": (lambda raw: edit_header(raw, set_meta("lineage", ["train"])), "entry 0 is not an object"),
    "lineage seed a string": (lambda raw: edit_header(raw, edit_meta_json("lineage", lambda l: l[0].update(seed="0"))), "seed has the wrong type"),
    "lineage forget a string": (lambda raw: edit_header(raw, edit_meta_json("lineage", lambda l: l[0].update(forget="x"))), "forget has the wrong type"),
    "billion layers": (lambda raw: edit_header(raw, edit_meta_json("unet_config", lambda c: c.update(layers_per_block=10**9))), "implausible UNet config \\(layers_per_block"),
    "huge sample size": (lambda raw: edit_header(raw, edit_meta_json("unet_config", lambda c: c.update(sample_size=10**6))), "implausible UNet config \\(sample_size"),
    "huge width": (lambda raw: edit_header(raw, edit_meta_json("unet_config", lambda c: c.update(block_out_channels=[16, 10**7]))), "block_out_channels"),
    "bad block type": (lambda raw: edit_header(raw, edit_meta_json("unet_config", lambda c: c.update(down_block_types=["Evil", "DownBlock2D"]))), "cannot be built by diffusers"),
    "trillion timesteps": (lambda raw: edit_header(raw, edit_meta_json("scheduler_config", lambda c: c.update(num_train_timesteps=10**12))), "num_train_timesteps"),
    "unknown beta schedule": (lambda raw: edit_header(raw, edit_meta_json("scheduler_config", lambda c: c.update(beta_schedule="evil"))), "scheduler config diffusers cannot build"),
    "class count differs": (lambda raw: edit_header(raw, edit_meta_json("data", lambda d: d.update(class_names=["a", "b"]))), "class count differs"),
    "resolution differs": (lambda raw: edit_header(raw, edit_meta_json("data", lambda d: d.update(resolution=16))), "resolution differs"),
    "class names not strings": (lambda raw: edit_header(raw, edit_meta_json("data", lambda d: d.update(class_names=[1, 2, 3, 4]))), "class_names"),
    "weights for another model": (lambda raw: edit_header(raw, edit_meta_json("unet_config", lambda c: c.update(layers_per_block=2))), "do not match its UNet config"),
}


def _overlap(raw: bytes) -> bytes:
    def edit(header):
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        a, b = header[names[0]], header[names[1]]
        size = b["data_offsets"][1] - b["data_offsets"][0]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + size]
    return edit_header(raw, edit)


def _gap(raw: bytes) -> bytes:
    def edit(header):
        last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        begin, end = header[last]["data_offsets"]
        header[last]["data_offsets"] = [begin + 4, end + 4]
    header, data = split_file(raw)
    edit(header)
    return build_file(header, data + b"\0" * 4)


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_corrupt_headers_are_refused_before_any_tensor_is_read(model, tmp_path, monkeypatch, case):
    import safetensors.torch

    make, message = HEADER_CASES[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(make(model.path.read_bytes()))

    def no_tensor_reads(*args, **kwargs):
        raise AssertionError("a tensor was read before the header was validated")

    monkeypatch.setattr(safetensors.torch, "load_file", no_tensor_reads)
    started = time.perf_counter()
    with pytest.raises(BadInputError, match=message) as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)
    assert time.perf_counter() - started < 5  # bounds are checked before anything is built from them


def test_oversized_header_is_refused_without_parsing(model, tmp_path):
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        handle.write(b" " * (MAX_HEADER_BYTES + 64))
    with pytest.raises(BadInputError, match="bad header size"):
        load_checkpoint(path)


def test_fifo_and_folders_are_refused_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.safetensors")  # opening a FIFO for reading would block forever
    with pytest.raises(BadInputError, match="not a file"):
        load_checkpoint(tmp_path / "pipe.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(BadInputError, match="not a file"):
        load_checkpoint(tmp_path / "dir.safetensors")


def test_a_valid_file_passes_every_check(model):
    loaded = load_checkpoint(model.path)
    assert loaded.integrity == metadata_integrity(loaded)
    assert verify_checkpoint(loaded) == []


# --------------------------------------------------------------------------------------------- provenance


def derived(parent: Checkpoint, folder: Path, name: str, command: str = "unlearn") -> Checkpoint:
    child = parent.derive({k: v + 0.01 for k, v in parent.state_dict.items()}, {"command": command, "method": "x", "params": {}})
    save_checkpoint(child, folder / name)
    return load_checkpoint(folder / name)


@pytest.fixture
def chain(model, tmp_path) -> list[Checkpoint]:
    """base → unlearned → attacked, saved side by side."""
    base = load_checkpoint(save_checkpoint(load_checkpoint(model.path), tmp_path / "base.safetensors"))
    unlearned = derived(base, tmp_path, "unlearned.safetensors")
    attacked = derived(unlearned, tmp_path, "attacked.safetensors", "relearn-attack")
    return [base, unlearned, attacked]


def write_metadata(path: Path, checkpoint: Checkpoint, integrity: str | None) -> None:
    """A file whose metadata was edited by hand: ``integrity`` kept (stale), recomputed, or dropped (None)."""
    from safetensors.torch import save_file

    header, _ = split_file(serialize(checkpoint))
    metadata = header["__metadata__"]
    if integrity is None:
        metadata.pop("integrity")
    else:
        metadata["integrity"] = integrity
    save_file(checkpoint.state_dict, str(path), metadata=metadata)


def test_a_clean_lineage_chain_verifies(chain, cli):
    attacked = chain[-1]
    assert attacked.lineage[2]["parent_sha256"] == chain[1].sha256
    assert attacked.lineage[2]["parent_weights_sha256"] == chain[1].lineage[-1]["weights_sha256"]
    assert verify_checkpoint(attacked) == []
    result = cli("inspect", attacked.path, "--verify", "--json")
    assert result.code == 0 and json.loads(result.out)["verified"], result


def test_verify_flags_weights_changed_outside_the_tool(chain, tmp_path, cli):
    from safetensors.torch import load_file, save_file

    attacked = chain[-1]
    tensors = load_file(str(attacked.path))
    tensors["conv_in.bias"][0] += 1e-3
    header, _ = split_file(attacked.path.read_bytes())
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=header["__metadata__"])
    result = cli("inspect", tmp_path / "edited.safetensors", "--verify")
    assert result.code == 2 and len(error_lines(result.err)) == 1 and "changed outside unlearnctl" in result.err


def test_verify_flags_lineage_edited_outside_the_tool(chain, tmp_path, cli):
    attacked = chain[-1]
    forged = Checkpoint(attacked.state_dict, attacked.unet_config, attacked.scheduler_config, attacked.data,
                        json.loads(json.dumps(attacked.lineage)))
    forged.lineage[1]["method"] = "retrain"  # claim a stronger method than was run
    write_metadata(tmp_path / "forged.safetensors", forged, integrity=attacked.integrity)
    result = cli("inspect", tmp_path / "forged.safetensors", "--verify")
    assert result.code == 2 and "metadata (configs, data description or lineage) was changed" in result.err, result


def test_verify_flags_a_broken_chain_even_with_a_recomputed_integrity_record(chain, tmp_path):
    attacked = chain[-1]
    lineage = json.loads(json.dumps(attacked.lineage))
    lineage[1]["weights_sha256"] = weights_sha256({"x": torch.zeros(1)})  # entry 2 did not start from this
    forged = Checkpoint(attacked.state_dict, attacked.unet_config, attacked.scheduler_config, attacked.data, lineage)
    write_metadata(tmp_path / "forged.safetensors", forged, integrity=metadata_integrity(forged))
    problems = verify_checkpoint(load_checkpoint(tmp_path / "forged.safetensors"))
    assert problems == ["lineage entry 2 (relearn-attack) started from other weights than entry 1 wrote (broken chain)",
                        "parent unlearned.safetensors has a lineage that is not this file's history up to entry 2"]
    empty = tmp_path / "alone"
    empty.mkdir()  # without the parent file next to it, the chain link alone still catches the forgery
    assert verify_checkpoint(load_checkpoint(tmp_path / "forged.safetensors"), search_dir=empty) == problems[:1]


def test_verify_flags_a_missing_parent_hash(chain, tmp_path):
    attacked = chain[-1]
    lineage = json.loads(json.dumps(attacked.lineage))
    lineage[1]["parent_sha256"] = None
    lineage[2]["weights_sha256"] = "not a hash"
    forged = Checkpoint(attacked.state_dict, attacked.unet_config, attacked.scheduler_config, attacked.data, lineage)
    write_metadata(tmp_path / "forged.safetensors", forged, integrity=metadata_integrity(forged))
    problems = verify_checkpoint(load_checkpoint(tmp_path / "forged.safetensors"))
    assert "lineage entry 1 (unlearn) names no parent file" in problems
    assert "lineage entry 2 (relearn-attack) records no hash of the weights it wrote" in problems


def test_verify_flags_a_parent_whose_history_differs(chain, tmp_path):
    base, unlearned, attacked = chain
    # a second "unlearned.safetensors" would need the same sha256 to be taken as the parent: instead rewrite the
    # parent's lineage in place, keep its file hash by pointing the child at the new file
    other = Checkpoint(unlearned.state_dict, unlearned.unet_config, unlearned.scheduler_config, unlearned.data,
                       [{**unlearned.lineage[0], "seed": 99}, unlearned.lineage[1]])
    save_checkpoint(other, tmp_path / "other-parent.safetensors")
    lineage = json.loads(json.dumps(attacked.lineage))
    lineage[2]["parent_sha256"] = other.sha256
    forged = Checkpoint(attacked.state_dict, attacked.unet_config, attacked.scheduler_config, attacked.data, lineage)
    write_metadata(tmp_path / "forged.safetensors", forged, integrity=metadata_integrity(forged))
    problems = verify_checkpoint(load_checkpoint(tmp_path / "forged.safetensors"))
    assert problems == ["parent other-parent.safetensors has a lineage that is not this file's history up to entry 2"]


def test_verify_flags_non_finite_weights_and_missing_integrity(chain, tmp_path):
    base = chain[0]
    weights = {k: v.clone() for k, v in base.state_dict.items()}
    weights["conv_in.bias"][0] = float("nan")
    broken = base.derive(weights, {"command": "edit", "params": {}})
    save_checkpoint(broken, tmp_path / "nan.safetensors")
    assert verify_checkpoint(load_checkpoint(tmp_path / "nan.safetensors")) == [
        "non-finite weights in tensor conv_in.bias (1 NaN/Inf values); the file is broken — re-export or retrain it"]
    write_metadata(tmp_path / "old.safetensors", base, integrity=None)
    problems = verify_checkpoint(load_checkpoint(tmp_path / "old.safetensors"))
    assert problems == ["the file has no integrity record (not written by this unlearnctl, or edited)"]


def test_checkpoint_bytes_are_deterministic(model, tmp_path):
    """safetensors orders metadata by a randomly seeded hash map; our writer sorts it, so equal models
    give equal files (and sha256s) in every process."""
    a = serialize(model)
    header, _ = split_file(a)
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    offsets = [header[k]["data_offsets"][0] for k in header if k != "__metadata__"]
    assert offsets == sorted(offsets)
    assert serialize(model) == a
