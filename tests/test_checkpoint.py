"""Checkpoint format: round trips, atomic writes, refusal of unsafe or corrupt files, diffusers interop."""

import json
import struct

import pytest
import torch

from unlearnctl.checkpoint import (
    Checkpoint, export_diffusers, import_diffusers, load_checkpoint, read_header, save_checkpoint, weights_sha256,
)
from unlearnctl.errors import BadInputError


def test_save_load_round_trip_is_exact(tiny_conditional, tmp_path):
    path = save_checkpoint(tiny_conditional, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.state_dict.keys() == tiny_conditional.state_dict.keys()
    for name, tensor in tiny_conditional.state_dict.items():
        assert torch.equal(loaded.state_dict[name], tensor), name
    assert loaded.unet_config == tiny_conditional.unet_config
    assert loaded.scheduler_config == tiny_conditional.scheduler_config
    assert loaded.data == tiny_conditional.data
    assert loaded.lineage == tiny_conditional.lineage
    assert loaded.sha256 == tiny_conditional.sha256


def test_metadata_records_recipe_data_and_versions(tiny_conditional):
    entry = tiny_conditional.lineage[0]
    assert entry["command"] == "train"
    assert entry["params"]["train"]["steps"] == 400
    assert entry["seed"] == 0
    assert {"unlearnctl", "torch", "diffusers"} <= entry["versions"].keys()
    assert entry["weights_sha256"] == weights_sha256(tiny_conditional.state_dict)
    assert tiny_conditional.data["fingerprint"] == entry["data_fingerprint"]
    assert tiny_conditional.scheduler_config["beta_schedule"] == "linear"
    assert tiny_conditional.unet_config["num_class_embeds"] == 5  # 4 classes + null class


def test_derived_checkpoint_names_its_parent(tiny_conditional, tmp_path):
    child = tiny_conditional.derive(tiny_conditional.state_dict, {"command": "unlearn", "method": "x"})
    assert child.lineage[-1]["parent_sha256"] == tiny_conditional.sha256
    assert len(child.lineage) == len(tiny_conditional.lineage) + 1


def test_written_file_has_no_temporary_leftovers(tiny_conditional, tmp_path):
    save_checkpoint(tiny_conditional, tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(BadInputError, match="pickle"):
        load_checkpoint(path)


def test_truncated_and_garbage_files_are_refused(tiny_conditional, tmp_path):
    good = tiny_conditional.path.read_bytes()
    for name, payload in {"truncated": good[: len(good) // 2], "garbage": b"\x00" * 64, "empty": b"",
                          "huge-header": struct.pack("<Q", 10**12) + b"{}"}.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(payload)
        with pytest.raises(BadInputError):
            load_checkpoint(path)


def test_weights_that_do_not_match_the_config_are_refused(tiny_conditional, tmp_path):
    broken = Checkpoint({**tiny_conditional.state_dict, "conv_in.weight": torch.zeros(1)}, tiny_conditional.unet_config,
                        tiny_conditional.scheduler_config, tiny_conditional.data, [])
    path = save_checkpoint(broken, tmp_path / "broken.safetensors")
    with pytest.raises(BadInputError, match="do not match"):
        load_checkpoint(path)


def test_header_is_validated_before_tensors_are_read(tiny_conditional, tmp_path):
    raw = tiny_conditional.path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [10**6]
    new = json.dumps(header).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + size:])
    with pytest.raises(BadInputError, match="does not match|outside"):
        read_header(path)


def test_diffusers_export_loads_in_plain_diffusers_with_same_outputs(tiny_unconditional, tmp_path):
    from diffusers import DDPMPipeline, UNet2DModel

    folder = export_diffusers(tiny_unconditional, tmp_path / "exported")
    theirs = UNet2DModel.from_pretrained(folder, subfolder="unet")
    pipeline = DDPMPipeline.from_pretrained(folder)
    ours = tiny_unconditional.build_unet()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 500, 999])
    with torch.no_grad():
        assert torch.equal(ours(x, t).sample, theirs(x, t).sample)
        assert torch.equal(ours(x, t).sample, pipeline.unet(x, t).sample)
    back = import_diffusers(folder, tiny_unconditional.data)
    assert all(torch.equal(back.state_dict[k], v) for k, v in tiny_unconditional.state_dict.items())


def test_export_refuses_non_empty_folder(tiny_unconditional, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(BadInputError, match="not empty"):
        export_diffusers(tiny_unconditional, tmp_path / "x")
    assert (tmp_path / "x" / "file").read_text() == "keep me"


def test_import_refuses_pickle_only_folder(tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(BadInputError, match="pickle"):
        import_diffusers(tmp_path, {})
