"""``unlearn`` on text-to-image models: every method through the CLI, forget prompts, captioned forget images,
exact retraining of the embedded default, and the refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unlearnctl.methods import available_methods, get_method

FINE_TUNING = [name for name in available_methods(exact=False)]
TINY = ("--steps", "2", "--batch-size", "4", "--quiet", "--json")


def _run(cli, *args) -> dict:
    result = cli("unlearn", *args, *TINY)
    assert result.code == 0, result.err
    return json.loads(result.out)


@pytest.mark.parametrize("method", FINE_TUNING)
def test_every_fine_tuning_method_forgets_a_class_of_a_text_model(method, text_model, tmp_path, cli):
    from unlearnctl.checkpoint import load_checkpoint

    out = tmp_path / f"{method}.safetensors"
    params = ("--num-generated", "4") if method == "dimum" else ("--esd-sample-steps", "3") if method.startswith("esd") else ()
    report = _run(cli, "-m", text_model, "--method", method, "--forget-class", "bar", "--out", out, *params)
    assert report["steps_run"] == 2 and report["forget"]["class_ids"] == [0]
    base, model = load_checkpoint(text_model), load_checkpoint(out)
    assert model.components == base.components and model.frozen.keys() == base.frozen.keys()
    assert all(torch.equal(model.frozen[k], base.frozen[k]) for k in base.frozen)  # the frozen parts stay the base's
    moved = [k for k in base.state_dict if not torch.equal(base.state_dict[k], model.state_dict[k])]
    assert moved, "no weight changed"
    trainable = model.lineage[-1]["params"]["trainable"]
    assert trainable == get_method(method).defaults.get("trainable", "all")
    if trainable == "cross-attention":
        assert all(".attn2." in k for k in moved)
    if trainable == "non-cross-attention":
        assert not any(".attn2." in k for k in moved)
    assert cli("inspect", out, "--verify").code == 0


def test_a_forget_prompt_takes_its_captioned_images_and_drawn_ones(text_model, tmp_path, cli):
    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.data import load_recorded_data
    from unlearnctl.text_to_image import caption_seed, captioned_split

    prompt = "a picture of a bar"
    out = tmp_path / "p.safetensors"
    report = _run(cli, "-m", text_model, "--method", "salun", "--forget-prompt", prompt, "--prompt-samples", "3", "--out", out)
    base = load_checkpoint(text_model)
    captions = captioned_split(load_recorded_data(base.data), caption_seed(base)).train.captions
    exact = sum(caption == prompt for caption in captions)
    assert exact > 0 and report["forget"]["num_forget"] == exact + 3
    assert report["forget"]["mode"] == "class" and report["forget"]["spec"]["prompts"] == [prompt]
    assert set(report["prepared"]["relabelled_as"]) == {prompt}
    assert report["prepared"]["relabelled_as"][prompt] in set(captions) - {prompt}
    assert load_checkpoint(out).lineage[-1]["forget"]["spec"]["prompts"] == [prompt]


def test_probes_measure_the_concepts_forget_rate_as_evaluate_does(text_model, tmp_path, cli):
    report = _run(cli, "-m", text_model, "--method", "naive", "--forget-class", "bar", "--probe-every", "2",
                  "--probe-samples", "8", "--probe-steps", "2", "--out", tmp_path / "p.safetensors")
    assert [p["step"] for p in report["probes"]] == [0, 2]
    assert all(p["forget_rate_n"] == 8 and 0 <= p["forget_rate"] <= 1 for p in report["probes"])


def test_captioned_forget_images_are_forgotten_with_their_captions(text_model, shapes_npz, tmp_path, cli):
    """SISS's setting: memorised image–caption pairs given as a folder with metadata.jsonl."""
    from PIL import Image

    folder = tmp_path / "memorised"
    folder.mkdir()
    images = np.load(shapes_npz)["images"][:2]
    rows = []
    for i, pixels in enumerate(images):
        Image.fromarray(pixels.squeeze()).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a memorised shape number {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    report = _run(cli, "-m", text_model, "--method", "siss", "--forget-images", folder, "--out", tmp_path / "s.safetensors")
    assert report["forget"]["num_forget"] == 2 and report["forget"]["mode"] == "data"


def test_retrain_repeats_the_embedded_recipe_without_the_forget_set(text_model, tmp_path, cli):
    from unlearnctl.checkpoint import load_checkpoint

    out = tmp_path / "retrain.safetensors"
    report = _run(cli, "-m", text_model, "--method", "retrain", "--forget-class", "bar", "--out", out)
    base, model = load_checkpoint(text_model), load_checkpoint(out)
    entry = model.lineage[-1]
    assert entry["command"] == "retrain" and entry["params"]["recipe"]["text_to_image"]
    assert entry["params"]["num_train_images"] == report["forget"]["num_retain"]
    assert model.unet_config == base.unet_config and model.components.keys() == base.components.keys()
    assert any(not torch.equal(model.frozen[k], base.frozen[k]) for k in base.frozen if k.startswith("vae/"))  # a new autoencoder
    assert cli("inspect", out, "--verify").code == 0


def _refused(cli, tmp_path, *args, message: str) -> None:
    before = set(tmp_path.rglob("*"))
    result = cli("unlearn", *args)
    assert result.code == 2, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.err
    assert set(tmp_path.rglob("*")) == before  # nothing written


def test_refusals(text_model, tiny_conditional, shapes_npz, tmp_path, cli):
    from sd_common import save_tiny_sd
    from unlearnctl.checkpoint import import_diffusers, save_checkpoint

    out = ("--out", tmp_path / "o.safetensors", "--steps", "1", "--quiet")
    _refused(cli, tmp_path, "-m", tiny_conditional.path, "--method", "naive", "--forget-prompt", "a bar", *out,
             message="--forget-prompt names a concept of a text-to-image model")
    _refused(cli, tmp_path, "-m", tiny_conditional.path, "--method", "esd-x", "--forget-class", "bar", *out,
             message="not text-conditional")
    _refused(cli, tmp_path, "-m", tiny_conditional.path, "--method", "naive", "--forget-class", "bar", "--trainable",
             "cross-attention", *out, message="--trainable applies to text-to-image models")
    _refused(cli, tmp_path, "-m", text_model, "--method", "naive", "--forget-class", "bar", "--trainable", "attn", *out,
             message="unknown trainable-parameter choice")
    _refused(cli, tmp_path, "-m", text_model, "--method", "naive", "--forget-images", shapes_npz, *out,
             message="needs its caption")
    _refused(cli, tmp_path, "-m", text_model, "--method", "naive", "--forget-prompt", " ", *out,
             message="a forget prompt is empty")
    _refused(cli, tmp_path, "-m", text_model, "--method", "naive", "--forget-prompt", "a red giraffe", "--prompt-samples",
             "0", *out, message="no training image is captioned with the forget prompt")
    sd = import_diffusers(save_tiny_sd(tmp_path / "src"), {"source": "unknown", "class_names": []})
    save_checkpoint(sd, tmp_path / "src" / "sd.safetensors")
    _refused(cli, tmp_path, "-m", tmp_path / "src" / "sd.safetensors", "--method", "retrain", "--forget-prompt", "a cat",
             *out, message="exact retraining of an imported model needs its original training run")
