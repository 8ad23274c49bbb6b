"""Text-to-image (latent Stable Diffusion) models: import, sample, export, verify, refuse bad input.

Every pipeline is a tiny random ``StableDiffusionPipeline`` built here from configs (tests/sd_common.py):
nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sd_common import save_tiny_sd

PROMPTS = ["a cat", "a red dog", "a cat"]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def sd_checkpoint(sd_folder, tmp_path_factory):
    from unlearnctl.checkpoint import import_diffusers, load_checkpoint, save_checkpoint

    path = tmp_path_factory.mktemp("sdck") / "sd.safetensors"
    save_checkpoint(import_diffusers(sd_folder, {"source": "unknown", "class_names": []}), path)
    return load_checkpoint(path)


def pipeline_images(folder: Path, *, steps: int, guidance: float, seed: int, negative: str | None = None) -> torch.Tensor:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPTS, negative_prompt=None if negative is None else [negative] * len(PROMPTS), num_inference_steps=steps,
               guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), output_type="pt", height=16, width=16)
    return out.images * 2 - 1


@pytest.mark.parametrize("guidance,negative", [(7.5, None), (1.0, None), (3.0, "a dog")])
def test_exported_pipeline_draws_the_same_images_as_the_sampler(sd_checkpoint, tmp_path, guidance, negative):
    from unlearnctl.checkpoint import export_diffusers
    from unlearnctl.sampling import generate_from_prompts

    ours = generate_from_prompts(sd_checkpoint, PROMPTS, per_prompt=1, steps=6, guidance=guidance, seed=11,
                                 negative_prompt=negative, device="cpu")
    export_diffusers(sd_checkpoint, tmp_path / "exported")
    theirs = pipeline_images(tmp_path / "exported", steps=6, guidance=guidance, seed=11, negative=negative)
    assert ours.shape == theirs.shape == (3, 3, 16, 16)
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours[0] - ours[1]).abs().max() > 1e-3  # the prompt matters (a sampler ignoring text would fail here)


@pytest.mark.parametrize("scheduler,prediction_type", [("DDIMScheduler", "v_prediction"), ("EulerDiscreteScheduler", "epsilon")])
def test_other_samplers_and_v_prediction_match_the_pipeline(tmp_path, scheduler, prediction_type):
    from unlearnctl.checkpoint import import_diffusers
    from unlearnctl.sampling import generate_from_prompts

    folder = save_tiny_sd(tmp_path, scheduler=scheduler, prediction_type=prediction_type, seed=3)
    checkpoint = import_diffusers(folder, {"source": "unknown", "class_names": []})
    assert checkpoint.scheduler_config["prediction_type"] == prediction_type
    ours = generate_from_prompts(checkpoint, PROMPTS, per_prompt=1, steps=5, guidance=7.5, seed=2, device="cpu")
    assert (ours - pipeline_images(folder, steps=5, guidance=7.5, seed=2)).abs().max() <= 1e-4


def test_the_checkpoint_holds_the_whole_pipeline_and_round_trips(sd_folder, sd_checkpoint, tmp_path):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from unlearnctl.checkpoint import load_checkpoint, save_checkpoint

    assert sd_checkpoint.text_conditional and not sd_checkpoint.conditional
    assert sorted(sd_checkpoint.components) == ["scheduler", "text_encoder", "tokenizer", "vae"]
    vae = AutoencoderKL.from_pretrained(sd_folder / "vae")
    encoder = CLIPTextModel.from_pretrained(sd_folder / "text_encoder")
    for name, module in (("vae", vae), ("text_encoder", encoder)):
        for key, value in module.state_dict().items():
            assert torch.equal(sd_checkpoint.frozen[f"{name}/{key}"], value), (name, key)
    save_checkpoint(sd_checkpoint, tmp_path / "again.safetensors")
    again = load_checkpoint(tmp_path / "again.safetensors")
    assert again.sha256 == sd_checkpoint.sha256  # the same checkpoint gives the same bytes
    assert again.components == sd_checkpoint.components


def test_verify_refuses_a_component_changed_outside_the_tool(sd_checkpoint, tmp_path, cli):
    from dataclasses import replace

    from unlearnctl.checkpoint import atomic_write_bytes, serialize

    key = next(k for k in sd_checkpoint.frozen if k.startswith("vae/") and k.endswith("weight"))
    frozen = {**sd_checkpoint.frozen, key: sd_checkpoint.frozen[key] + 0.01}
    atomic_write_bytes(tmp_path / "edited.safetensors", serialize(replace(sd_checkpoint, frozen=frozen)))
    result = cli("inspect", tmp_path / "edited.safetensors", "--verify")
    assert result.code == 2
    assert "vae weights changed outside unlearnctl" in result.err
    assert cli("inspect", sd_checkpoint.path, "--verify").code == 0


def test_cli_import_sample_export(sd_folder, tmp_path, cli):
    model = tmp_path / "m.safetensors"
    assert cli("import", sd_folder, "--out", model).code == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\n a red dog \n")
    result = cli("sample", "-m", model, "--prompts-file", prompts, "--per-prompt", "2", "--steps", "3",
                 "--out", tmp_path / "grid.png", "--npz", tmp_path / "s.npz")
    assert result.code == 0, result.err
    assert "4 images, 2 prompts × 2" in result.out
    import numpy as np

    saved = np.load(tmp_path / "s.npz")
    assert saved["images"].shape == (4, 16, 16, 3) and saved["labels"].tolist() == [0, 0, 1, 1]
    assert cli("export", "-m", model, "--diffusers-dir", tmp_path / "out").code == 0
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


def _refused(cli, tmp_path, *args, message: str) -> None:
    before = set(tmp_path.rglob("*"))
    result = cli(*args)
    assert result.code == 2, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.err
    assert set(tmp_path.rglob("*")) == before  # nothing written


def _broken_copy(sd_folder: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(sd_folder, folder)
    return folder


def test_unsupported_pipeline_class_is_refused_naming_what_is_supported(sd_folder, tmp_path, cli):
    folder = _broken_copy(sd_folder, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    _refused(cli, tmp_path, "import", folder, "--out", tmp_path / "m.safetensors",
             message="StableDiffusionXLPipeline, which unlearnctl does not import; supported: StableDiffusionPipeline")


def test_missing_component_is_refused(sd_folder, tmp_path, cli):
    folder = _broken_copy(sd_folder, tmp_path)
    shutil.rmtree(folder / "vae")
    _refused(cli, tmp_path, "import", folder, "--out", tmp_path / "m.safetensors", message="lacks the pipeline component vae")


def test_pickle_only_component_is_refused(sd_folder, tmp_path, cli):
    folder = _broken_copy(sd_folder, tmp_path)
    weights = next((folder / "text_encoder").glob("*.safetensors"))
    weights.rename(folder / "text_encoder" / "pytorch_model.bin")
    _refused(cli, tmp_path, "import", folder, "--out", tmp_path / "m.safetensors",
             message="has no .safetensors weights (only pytorch_model.bin); pickle weights are refused")


def test_missing_tokenizer_is_refused(sd_folder, tmp_path, cli):
    folder = _broken_copy(sd_folder, tmp_path)
    for path in (folder / "tokenizer").iterdir():
        if path.name in ("tokenizer.json", "vocab.json", "merges.txt"):
            path.unlink()
    _refused(cli, tmp_path, "import", folder, "--out", tmp_path / "m.safetensors", message="has no tokenizer files")


def test_latent_channels_that_do_not_match_the_vae_are_refused(sd_folder, tmp_path, cli):
    folder = _broken_copy(sd_folder, tmp_path)
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "latent_channels": 3}))
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    vae = AutoencoderKL.from_config({**config, "latent_channels": 3})
    weights = next((folder / "vae").glob("*.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(weights))
    _refused(cli, tmp_path, "import", folder, "--out", tmp_path / "m.safetensors",
             message="the UNet takes 4 latent channels, the VAE makes 3")


def test_a_prompt_to_a_class_model_and_a_class_to_a_text_model_are_refused(sd_checkpoint, tiny_conditional, tmp_path, cli):
    _refused(cli, tmp_path, "sample", "-m", tiny_conditional.path, "--prompt", "a cat", "--out", tmp_path / "g.png",
             message="this model is not text-conditional")
    _refused(cli, tmp_path, "sample", "-m", sd_checkpoint.path, "--class", "1", "--out", tmp_path / "g.png",
             message="this model is text-conditional")


def test_component_tensors_without_a_components_record_are_refused(tiny_conditional, tmp_path):
    from dataclasses import replace

    from unlearnctl.checkpoint import atomic_write_bytes, load_checkpoint, serialize
    from unlearnctl.errors import BadInputError

    smuggled = replace(tiny_conditional, frozen={"vae/x": torch.zeros(2)})
    atomic_write_bytes(tmp_path / "odd.safetensors", serialize(smuggled))
    with pytest.raises(BadInputError, match="component tensors .* but no components record"):
        load_checkpoint(tmp_path / "odd.safetensors")


@pytest.mark.parametrize("flags", [("--text-to-image", "--autoencoder-steps", "1"), ("--size", "tiny")])
def test_train_default_batch_size_depends_on_the_model_kind(flags, shapes_npz, tmp_path, cli):
    """`train --text-to-image` defaults to its own, smaller batch (its 10-minute budget); pixel models keep 128."""
    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.text_to_image import TEXT_TO_IMAGE_BATCH_SIZE
    from unlearnctl.training import TrainConfig

    out = tmp_path / "m.safetensors"
    assert cli("train", *flags, "--data", f"npz:{shapes_npz}", "--steps", "1", "--out", out, "--quiet").code == 0
    expected = TEXT_TO_IMAGE_BATCH_SIZE if "--text-to-image" in flags else TrainConfig.batch_size
    assert load_checkpoint(out).lineage[-1]["params"]["train"]["batch_size"] == expected
    assert TEXT_TO_IMAGE_BATCH_SIZE < TrainConfig.batch_size == 128


def test_train_text_to_image_writes_a_model_that_samples_and_exports(shapes_npz, tmp_path, cli):
    """The embedded default's code path at toy sizes (the real recipe's figures are in docs/text-to-image.md)."""
    from unlearnctl.checkpoint import load_checkpoint

    out = tmp_path / "t2i.safetensors"
    result = cli("train", "--text-to-image", "--data", f"npz:{shapes_npz}", "--steps", "3", "--autoencoder-steps", "3",
                 "--batch-size", "8", "--gradient-checkpointing", "--out", out, "--quiet")
    assert result.code == 0, result.err
    checkpoint = load_checkpoint(out)
    assert checkpoint.text_conditional and checkpoint.data["class_names"]
    assert checkpoint.lineage[-1]["params"]["gradient_checkpointing"]
    _refused(cli, tmp_path, "train", "--gradient-checkpointing", "--out", tmp_path / "pixel.safetensors",
             message="--gradient-checkpointing is for --text-to-image models")
    entry = checkpoint.lineage[-1]
    assert entry["params"]["text_to_image"] and entry["params"]["captions"] == "generated"
    assert cli("inspect", out, "--verify").code == 0
    grid = tmp_path / "g.png"
    assert cli("sample", "-m", out, "--prompt", "a picture of a bar", "--steps", "2", "--out", grid, "--quiet").code == 0
    assert cli("export", "-m", out, "--diffusers-dir", tmp_path / "exported").code == 0

    from unlearnctl.metrics.prompted import prompted_class_accuracy

    class FirstClassSayer:  # labels every image as class 0: the accuracy is exactly 1 / number of classes
        def predict(self, images):
            return torch.zeros(len(images), dtype=torch.long)

    scored = prompted_class_accuracy(checkpoint, FirstClassSayer(), per_class=2, steps=2, device="cpu")
    classes = len(checkpoint.data["class_names"])
    assert scored["prompt_accuracy_n"] == 2 * classes and scored["prompt_accuracy_count"] == 2
    assert scored["per_class"][checkpoint.data["class_names"][0]]["accuracy"] == 1.0
    assert scored["prompt_accuracy_ci95_low"] < 1 / classes < scored["prompt_accuracy_ci95_high"]


def test_label_dropout_replaces_rows_by_the_null_condition():
    from unlearnctl.training import drop_conditions, drop_labels

    labels = torch.arange(1000) % 7
    dropped = drop_labels(labels, 9, 0.25, torch.Generator().manual_seed(0))
    embeddings = torch.randn(1000, 3, 2)
    null = torch.zeros(1000, 3, 2)
    dropped_rows = drop_conditions(embeddings, null, 0.25, torch.Generator().manual_seed(0))
    same_rows = (dropped == 9)
    assert 0.2 < same_rows.float().mean() < 0.3
    assert torch.equal((dropped_rows == 0).flatten(1).all(1), same_rows)  # the same rows, for labels and embeddings
    assert torch.equal(dropped_rows[~same_rows], embeddings[~same_rows])


def test_trainable_choices_split_the_unet_at_its_cross_attention(sd_checkpoint):
    from unlearnctl.denoisers.latent import select_trainable
    from unlearnctl.errors import BadInputError

    unet = sd_checkpoint.build_unet()
    total = sum(p.numel() for p in unet.parameters())
    cross = select_trainable(unet, "cross-attention")
    assert all((".attn2." in n) == p.requires_grad for n, p in unet.named_parameters())
    assert 0 < cross < total and select_trainable(unet, "non-cross-attention") == total - cross
    assert select_trainable(unet, "all") == total
    with pytest.raises(BadInputError, match="unknown trainable-parameter choice"):
        select_trainable(unet, "attn")


def test_single_file_import_equals_the_folder_import(sd_folder, sd_checkpoint, tmp_path, cli):
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from sd_single_file import ldm_state_dict, save_single_file
    from unlearnctl.checkpoint import load_checkpoint

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
    ldm = ldm_state_dict(pipe)  # the test's own renaming, checked against diffusers' converter first
    assert convert_ldm_unet_checkpoint(ldm, dict(pipe.unet.config)).keys() == pipe.unet.state_dict().keys()
    assert convert_ldm_vae_checkpoint(ldm, dict(pipe.vae.config)).keys() == pipe.vae.state_dict().keys()
    single = save_single_file(pipe, tmp_path / "sd-single.safetensors")
    result = cli("import", single, "--config", sd_folder, "--out", tmp_path / "from-single.safetensors")
    assert result.code == 0, result.err
    imported = load_checkpoint(tmp_path / "from-single.safetensors")
    assert imported.state_dict.keys() == sd_checkpoint.state_dict.keys()
    assert all(torch.equal(imported.state_dict[k], sd_checkpoint.state_dict[k]) for k in imported.state_dict)
    assert imported.frozen.keys() == sd_checkpoint.frozen.keys()
    assert all(torch.equal(imported.frozen[k], sd_checkpoint.frozen[k]) for k in imported.frozen)
    assert imported.components == sd_checkpoint.components


def test_single_file_import_refusals(sd_folder, tmp_path, cli):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04not really")
    _refused(cli, tmp_path, "import", pickle, "--config", sd_folder, "--out", tmp_path / "m.safetensors",
             message="is a pickle checkpoint (.ckpt)")
    single = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(single))
    _refused(cli, tmp_path, "import", single, "--out", tmp_path / "m.safetensors", message="give --config DIR")
    _refused(cli, tmp_path, "import", single, "--config", sd_folder, "--out", tmp_path / "m.safetensors",
             message=f"diffusers could not read {single}")
