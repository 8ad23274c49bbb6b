"""DiMRA on text-to-image models: forget sets rebuilt on the captioned split, image–caption auxiliary sources,
the guard on captions, fine-tuning on the captions' embeddings and the relearning curve as `evaluate` scores it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_attack import assert_point_is_evaluation
from unlearnctl.attacks import AuxContext, get_aux_source
from unlearnctl.attacks.dimra import AttackConfig, build_aux_data, recorded_forget_sets, relearn_attack
from unlearnctl.checkpoint import lineage_entry, load_checkpoint, save_checkpoint
from unlearnctl.data import ForgetSpec, load_recorded_data, resolve_forget
from unlearnctl.errors import BadInputError
from unlearnctl.text_to_image import caption_seed, captioned_split

PROMPT = "a picture of a bar"  # class_prompt("bar"): a caption the shapes' generated captions use
FAST = dict(steps=2, batch_size=4, num_generated=6, generate_steps=2, curve_samples=4, curve_sample_steps=2)


def _unlearned(text_model: Path, folder: Path, spec: ForgetSpec, **config) -> "Checkpoint":  # noqa: F821
    from unlearnctl.unlearning import UnlearnConfig, unlearn

    model, _ = unlearn(load_checkpoint(text_model), "naive", spec,
                       UnlearnConfig(steps=2, batch_size=4, device="cpu", **config))
    return load_checkpoint(save_checkpoint(model, folder / "unlearned.safetensors"))


@pytest.fixture(scope="module")
def by_class(text_model, tmp_path_factory):
    """The tiny text model after 2 steps of `unlearn --forget-class bar`."""
    return _unlearned(text_model, tmp_path_factory.mktemp("class"), ForgetSpec(classes=("bar",)))


@pytest.fixture(scope="module")
def by_prompt(text_model, tmp_path_factory):
    """... and of `unlearn --forget-prompt PROMPT --prompt-samples 2` (its forget set holds 2 drawn images)."""
    return _unlearned(text_model, tmp_path_factory.mktemp("prompt"), ForgetSpec(prompts=(PROMPT,)), prompt_samples=2)


@pytest.fixture(scope="module")
def by_index(text_model, tmp_path_factory):
    """The text model with a lineage recording `--forget-index 0` (the weights are the base's: the guard reads only
    the lineage). Image 0's caption is shared by retained images, whose pairs the guard must drop."""
    base = load_checkpoint(text_model)
    forget_set = resolve_forget(ForgetSpec(indices=(0,)), split_of(base))
    entry = lineage_entry("unlearn", {"method": "naive"}, 0, 0.0, method="naive", forget=forget_set.describe())
    model = base.derive(dict(base.state_dict), entry)
    return load_checkpoint(save_checkpoint(model, tmp_path_factory.mktemp("index") / "index.safetensors"))


@pytest.fixture
def classifier_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNLEARNCTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def split_of(checkpoint):
    return captioned_split(load_recorded_data(checkpoint.data), caption_seed(checkpoint))


def context(checkpoint, **kw) -> AuxContext:
    split = split_of(checkpoint)
    return AuxContext(checkpoint, split, recorded_forget_sets(checkpoint, split), device="cpu", seed=0, **kw)


def write_folder(folder: Path, pixels: np.ndarray, captions: list[str] | None) -> Path:
    """PNG files with a metadata.jsonl of their captions (none when ``captions`` is None)."""
    from PIL import Image

    folder.mkdir(parents=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image.squeeze()).save(folder / f"{i}.png")
    if captions is not None:
        rows = [json.dumps({"file_name": f"{i}.png", "text": caption}) for i, caption in enumerate(captions)]
        (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def clean_folder(checkpoint, folder: Path) -> tuple[Path, list[str]]:
    """Held-out images of the classes no forget set names, with their captions."""
    from unlearnctl.data import to_uint8

    held = split_of(checkpoint).heldout
    keep = (held.labels != 0).nonzero().flatten()[:8]  # not "bar"
    held = held.subset(keep)
    return write_folder(folder, to_uint8(held.images).transpose(0, 2, 3, 1), held.captions), held.captions


# --------------------------------------------------------------------------------------------- forget sets


def test_forget_sets_are_rebuilt_on_the_captioned_split(by_class, by_prompt):
    (forget_set,) = recorded_forget_sets(by_class, split_of(by_class))
    assert forget_set.fingerprint == by_class.lineage[-1]["forget"]["fingerprint"]  # checked, captions included
    assert set(forget_set.forget.captions) <= {"a picture of a bar", "a drawing of a bar", "a bar"}
    # a --forget-prompt's recorded fingerprint covers the images the base drew: only the training part is rebuilt
    split = split_of(by_prompt)
    (prompt_set,) = recorded_forget_sets(by_prompt, split)
    exact = sum(caption == PROMPT for caption in split.train.captions)
    recorded = by_prompt.lineage[-1]["forget"]
    assert recorded["num_forget"] == exact + 2 and len(prompt_set.forget) == exact > 0
    assert prompt_set.fingerprint != recorded["fingerprint"] and set(prompt_set.forget.captions) == {PROMPT}


# --------------------------------------------------------------------------------------------- sources and guard


def test_retain_pairs_exclude_forget_images_and_captions(by_class, by_prompt):
    for model in (by_class, by_prompt):
        ctx = context(model)
        aux, info = build_aux_data(get_aux_source("retain"), "", ctx)
        assert aux.captions is not None and len(aux.captions) == len(aux) == info["num_images"]
        assert not set(aux.captions) & ctx.forget_captions and info["shared_captions"] == info["shared_images"] == 0
        assert PROMPT in ctx.forget_captions and PROMPT in info["forget_captions"]
    assert 0 in aux.labels.tolist()  # by_prompt: only the pairs captioned exactly PROMPT are forgotten; other "bar" pairs stay


def test_retain_drops_pairs_captioned_like_a_forget_image(by_index):
    ctx = context(by_index)
    caption = ctx.split.train.captions[0]
    sharing = sum(c == caption for c in ctx.split.train.captions[1:])
    aux, info = build_aux_data(get_aux_source("retain"), "", ctx)
    assert sharing > 0 and info["dropped_exact_copies"] == info["dropped_near_copies"] == 0
    assert info["dropped_forget_captions"] == sharing and caption not in aux.captions
    assert len(aux) == info["num_candidates"] - sharing


def test_generated_pairs_sample_retained_prompts_and_skip_forget_prompts(by_class, by_prompt):
    from unlearnctl.captions import class_prompt

    aux, info = build_aux_data(get_aux_source("generated"), "", context(by_class, num_generated=6, generate_steps=2))
    names = ["column", "box", "cross"]
    assert info["prompts"] == [class_prompt(n) for n in names] and info["classes"] == [1, 2, 3]
    assert len(aux) == 6 and aux.captions == [class_prompt(n) for n in names for _ in range(2)]
    assert aux.labels.tolist() == [1, 1, 2, 2, 3, 3]
    # a forgotten prompt is not sampled: class_prompt("bar") is the forget prompt
    _, info = build_aux_data(get_aux_source("generated"), "3", context(by_prompt, generate_steps=2))
    assert PROMPT not in info["prompts"] and len(info["prompts"]) == 3 and info["dropped_forget_captions"] == 0


def test_folder_pairs_and_the_refusals(by_prompt, tmp_path):
    from unlearnctl.data import to_uint8

    folder, captions = clean_folder(by_prompt, tmp_path / "ok")
    aux, info = build_aux_data(get_aux_source("folder"), str(folder), context(by_prompt))
    assert aux.captions == captions and info["num_images"] == len(captions) and info["dropped_forget_captions"] == 0
    pixels = to_uint8(aux.images).transpose(0, 2, 3, 1)
    bad = write_folder(tmp_path / "bad", pixels, [*captions[:-1], PROMPT])
    with pytest.raises(BadInputError, match=r"holds 1 images captioned with a forget prompt \(first: image #7"):
        build_aux_data(get_aux_source("folder"), str(bad), context(by_prompt))
    bare = write_folder(tmp_path / "bare", pixels, None)
    with pytest.raises(BadInputError, match="needs a caption per image"):
        build_aux_data(get_aux_source("folder"), str(bare), context(by_prompt))
    npz = tmp_path / "pairs.npz"
    np.savez(npz, images=pixels, captions=np.array(captions, dtype=str))
    aux, _ = build_aux_data(get_aux_source("npz"), str(npz), context(by_prompt))
    assert aux.captions == captions


# --------------------------------------------------------------------------------------------- the attack


@pytest.mark.parametrize("forgotten", ["by_class", "by_prompt"])
@pytest.mark.parametrize("aux", ["retain:0.5", "generated:4", "folder"])
def test_attack_fine_tunes_on_the_captions_embeddings(aux, forgotten, request, tmp_path, monkeypatch):
    import unlearnctl.training as training
    from unlearnctl.denoisers import denoiser_for
    from unlearnctl.runtime import Runtime

    model = request.getfixturevalue(forgotten)  # the unlearned model under attack
    if aux == "folder":
        aux = f"folder:{clean_folder(model, tmp_path / 'aux')[0]}"
    seen = {}
    fit = training.fit_denoiser

    def spy(denoiser, data, config, **kw):
        seen.update(data=data, conditions=kw["conditions"])
        return fit(denoiser, data, config, **kw)

    monkeypatch.setattr(training, "fit_denoiser", spy)
    attacked, curve = relearn_attack(model, aux, AttackConfig(**FAST), device="cpu")
    data, conditions = seen["data"], seen["conditions"]
    expected = denoiser_for(model, Runtime.create("cpu")).embed(data.captions)
    assert conditions.shape == expected.shape and conditions.shape[0] == len(data)
    torch.testing.assert_close(conditions, expected.cpu())
    assert curve is None and any(not torch.equal(model.state_dict[k], attacked.state_dict[k]) for k in model.state_dict)
    assert attacked.frozen.keys() == model.frozen.keys() and attacked.components == model.components
    recorded = attacked.lineage[-1]["attack"]["aux"]
    assert recorded["spec"] == aux and recorded["shared_captions"] == recorded["shared_images"] == 0
    assert not set(data.captions) & set(recorded["forget_captions"]) and PROMPT in recorded["forget_captions"]


def test_cli_records_spec_dropped_copies_and_captions(cli, by_index, tmp_path):
    out = tmp_path / "attacked.safetensors"
    result = cli("relearn-attack", "--model", by_index.path, "--out", out, "--aux", "retain", "--steps", 2,
                 "--batch-size", 4, "--device", "cpu", "--quiet", "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)
    aux = load_checkpoint(out).lineage[-1]["attack"]["aux"]
    assert aux["spec"] == "retain" and summary["dropped_captions"] == aux["dropped_forget_captions"] > 0
    assert summary["dropped_copies"] == aux["dropped_exact_copies"] + aux["dropped_near_copies"]
    assert aux["forget_captions"] == [split_of(by_index).train.captions[0]] and summary["shared_captions"] == 0
    assert cli("inspect", out, "--verify").code == 0


def _refused(cli, tmp_path, *args, message: str) -> None:
    before = set(tmp_path.rglob("*"))
    result = cli("relearn-attack", *args)
    assert result.code == 2, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in " ".join(lines[0].split()), result.err
    assert set(tmp_path.rglob("*")) == before  # nothing written


def test_cli_refuses_forget_captions_and_uncaptioned_folders(cli, by_prompt, tmp_path):
    from PIL import Image

    source, captions = clean_folder(by_prompt, tmp_path / "src")
    pixels = np.stack([np.array(Image.open(source / f"{i}.png")) for i in range(len(captions))])
    write_folder(tmp_path / "bad", pixels, [PROMPT, *captions[1:]])
    write_folder(tmp_path / "bare", pixels, None)
    args = ("--model", by_prompt.path, "--out", tmp_path / "a.safetensors", "--steps", 1, "--device", "cpu", "--quiet")
    _refused(cli, tmp_path, *args, "--aux", f"folder:{tmp_path / 'bad'}", message="captioned with a forget prompt (first: image #0")
    _refused(cli, tmp_path, *args, "--aux", f"folder:{tmp_path / 'bare'}", message="needs a caption per image")
    _refused(cli, tmp_path, *args, "--concept-class", "bar", "--forget-class", "bar", "--curve-every", 1,
             message="--concept-class names the class of --forget-prompt concepts")
    _refused(cli, tmp_path, *args, "--concept-class", "bar", "--forget-prompt", "a bar",
             message="no curve is recorded; add --curve-every K")


def test_cli_pixel_models_refuse_prompts(cli, tiny_conditional, tmp_path):
    args = ("--model", tiny_conditional.path, "--out", tmp_path / "a.safetensors", "--steps", 1, "--curve-every", 1,
            "--device", "cpu", "--quiet")
    _refused(cli, tmp_path, *args, "--forget-prompt", "a bar", message="--forget-prompt names a concept of a text-to-image model")
    _refused(cli, tmp_path, *args, "--forget-class", "bar", "--concept-class", "bar", message="--concept-class is for text-to-image models")


@pytest.fixture(scope="module")
def decoding_model(shapes_npz, tmp_path_factory):
    """A text model whose autoencoder decodes shape-like images (50 steps; the 2 of ``text_model`` decode grey, which
    the classifier never calls "bar"), with a lineage recording `--forget-class bar` (the weights are the base's)."""
    from unlearnctl.data import load_data
    from unlearnctl.text_to_image import train_text_to_image
    from unlearnctl.training import TrainConfig

    base = train_text_to_image(load_data(f"npz:{shapes_npz}"), config=TrainConfig(steps=4, batch_size=8, warmup_steps=1),
                               autoencoder_steps=50, device="cpu")
    forget_set = resolve_forget(ForgetSpec(classes=("bar",)), split_of(base))
    entry = lineage_entry("unlearn", {"method": "naive"}, 0, 0.0, method="naive", forget=forget_set.describe())
    model = base.derive(dict(base.state_dict), entry)
    return load_checkpoint(save_checkpoint(model, tmp_path_factory.mktemp("decoding") / "model.safetensors"))


def test_curve_step_0_is_evaluates_forget_rate(decoding_model, classifier_cache):
    """The curve regenerates the forget prompts' rows of the text evaluation (same prompts, same initial latents,
    DDIM), so its step-0 point is `evaluate`'s forget rate of the same model, seed, sample count and steps."""
    from unlearnctl.metrics.evaluate import EvalConfig, evaluate

    model = decoding_model
    config = AttackConfig(**{**FAST, "steps": 1, "curve_samples": 24, "curve_sample_steps": 3, "curve_seed": 3})
    _, curve = relearn_attack(model, "retain:0.2", config, curve_every=1, device="cpu")
    total = curve.metric["eval_num_samples"]
    assert total == 24 * 4 and curve.metric["num_samples"] == 24 and curve.metric["mode"] == "class"
    assert [p["step"] for p in curve.points] == [0, 1] and curve.forget["class_ids"] == [0]
    result = evaluate(model, config=EvalConfig(num_samples=total, steps=3, seed=3, metrics=("forget",), device="cpu"))
    assert_point_is_evaluation(curve.points[0], result, 24)


def test_cli_curve_of_a_forget_prompt_measures_its_concept(cli, by_prompt, tmp_path, classifier_cache):
    """A prompt given for the curve is measured as `evaluate --forget-prompt` measures it and kept out of D_au."""
    out, curve_json = tmp_path / "a.safetensors", tmp_path / "c.json"
    result = cli("relearn-attack", "--model", by_prompt.path, "--out", out, "--aux", "retain:0.2", "--steps", 2,
                 "--batch-size", 4, "--forget-prompt", "a drawing of a bar", "--curve-every", 1, "--curve-samples", 4,
                 "--curve-sample-steps", 2, "--curve-json", curve_json, "--device", "cpu", "--quiet", "--json")
    assert result.code == 0, result
    curve = json.loads(curve_json.read_text())
    assert curve["forget"]["prompts"] == {"0": ["a drawing of a bar"]} and curve["forget"]["class_ids"] == [0]
    assert [p["step"] for p in curve["points"]] == [0, 1, 2] and all(p["forget_rate_n"] == 4 for p in curve["points"])
    assert curve["metric"]["concept_class"] is None and "same prompts" in curve["metric"]["samples"]
    attack = load_checkpoint(out).lineage[-1]["attack"]
    assert {PROMPT, "a drawing of a bar"} <= set(attack["aux"]["forget_captions"])  # the lineage's prompt and the curve's
    assert [e["spec"]["prompts"] for e in attack["excluded"]] == [[PROMPT], ["a drawing of a bar"]]
