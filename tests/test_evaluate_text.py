"""``evaluate`` on text-to-image models: concept forget rate, memorised captions, retained prompts, CLIP score,
the membership audit on latents, gates and refusals (unlearnctl/metrics/text.py).

The model is the embedded text-to-image recipe trained for a few steps on the tiny shapes data; figures are
checked against direct computations on the evaluation's own samples, never against fixed numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unlearnctl.data import ForgetSpec
from unlearnctl.metrics.evaluate import EvalConfig, run_evaluation
from unlearnctl.metrics.membership import AuditConfig
from test_text_to_image import _refused  # one line on stderr, exit 2, nothing written

FAST_AUDIT = AuditConfig(repeats=1, timesteps=(50, 200))
CROSS = 3  # tests/conftest.py SHAPE_NAMES: bar, column, box, cross


def fast(**overrides) -> EvalConfig:
    return EvalConfig(**{"num_samples": 20, "steps": 2, "audit": FAST_AUDIT, "kid_subsets": 5, "device": "cpu",
                         "bootstrap_rounds": 20, **overrides})


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNLEARNCTL_CACHE", str(tmp_path_factory.getbasetemp() / "classifier-cache"))


@pytest.fixture(scope="module")
def t2i(shapes_split, tmp_path_factory):
    """The embedded text-to-image recipe at toy sizes (3 autoencoder and 3 UNet steps), saved."""
    from unlearnctl.checkpoint import load_checkpoint, save_checkpoint
    from unlearnctl.text_to_image import train_text_to_image
    from unlearnctl.training import TrainConfig

    checkpoint = train_text_to_image(shapes_split, config=TrainConfig(steps=3, batch_size=8, seed=0), autoencoder_steps=3,
                                     device="cpu")
    path = tmp_path_factory.mktemp("t2i") / "t2i.safetensors"
    save_checkpoint(checkpoint, path)
    return load_checkpoint(path)


class BrightnessNet(torch.nn.Module):
    """A known rule as a classifier: the class is the quartile of the image's mean brightness."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(1, 4)  # feature_dim for the provenance; unused by forward

    def forward(self, x):
        return torch.nn.functional.one_hot(brightness_class(x), 4).float() * 10


def brightness_class(images: torch.Tensor) -> torch.Tensor:
    return ((images.mean(dim=(1, 2, 3)) + 1) / 2 * 4).floor().clamp(0, 3).long()


@pytest.fixture
def rule_classifier(monkeypatch):
    import unlearnctl.metrics.classifier as classifier_module
    from unlearnctl.metrics.classifier import DomainClassifier

    rule = DomainClassifier(BrightnessNet(), ["bar", "column", "box", "cross"], None, None)
    monkeypatch.setattr(classifier_module, "resolve_classifier", lambda *a, **k: rule)
    return rule


def test_concept_evaluation_writes_every_figure_with_its_interval(t2i, tmp_path, cli):
    out = tmp_path / "e.json"
    result = cli("evaluate", "-m", t2i.path, "--forget-class", "cross", "-n", "20", "--steps", "2", "--audit-repeats", "1",
                 "--audit-timesteps", "50,200", "--bootstrap-rounds", "20", "--device", "cpu", "--json", out, "--quiet",
                 "--grid", tmp_path / "g.png", "--save-samples", tmp_path / "samples")
    assert result.code == 0, result.err
    found = json.loads(out.read_text())
    assert (tmp_path / "g.png").is_file() and (tmp_path / "g-forget.png").is_file()
    assert len(list((tmp_path / "samples" / "forget").glob("*.png"))) == 5
    # 20 samples over 4 conditions: the three retained classes' prompts and the concept's prompts
    assert (found["num_samples"], found["num_retain_samples"], found["num_forget_samples"]) == (20, 15, 5)
    for key in ("forget_rate", "forget_confident_rate", "retain_accuracy"):
        count, n = found[f"{key}_count"], found[f"{key}_n"]
        assert isinstance(count, int) and found[key] == count / n, key
        assert found[f"{key}_ci95_low"] <= found[key] <= found[f"{key}_ci95_high"], key
    assert found["forget_rate_n"] == 5 and found["retain_accuracy_n"] == 15 and found["forget_mode"] == "class"
    assert 0 <= found["forget_mean_probability"] <= 1
    for key in ("fid", "membership_auc"):
        assert found[f"{key}_ci95_low"] <= found[key] <= found[f"{key}_ci95_high"], key
    assert found["fid_n"] == 15 and found["membership_members"] == 20  # the audit's budget: min(1000, -n) crosses
    prov = found["provenance"]
    assert prov["model"]["text_conditional"] and prov["forget"]["class_ids"] == [CROSS]
    assert prov["forget"]["prompts"] == {"3": ["a picture of a cross", "a drawing of a cross", "a cross"]}
    assert prov["details"]["prompts"]["retained"] == ["a picture of a bar", "a picture of a box", "a picture of a column"]
    assert found["clip_score"] is None and "no --clip-model" in prov["skipped"]["clip"]


def test_forget_rate_and_retain_accuracy_equal_a_direct_computation(t2i, rule_classifier):
    from unlearnctl.captions import class_captions, class_prompt
    from unlearnctl.metrics.forget import measure_forgetting
    from unlearnctl.metrics.text import resolve_text_forget
    from unlearnctl.text_to_image import captioned_split
    from unlearnctl.data import load_recorded_data

    evaluation = run_evaluation(t2i, ForgetSpec(classes=("cross",)), fast(metrics=("forget", "retain"), num_samples=24))
    result, samples = evaluation.result, evaluation.samples
    forget_rows = torch.nonzero(samples.forget).flatten().tolist()
    prompts = [samples.prompts[i] for i in forget_rows]
    wordings = class_captions("cross")
    assert prompts == [wordings[i % len(wordings)] for i in range(6)]  # the concept's caption wordings, cycled
    predicted = brightness_class(samples.images[forget_rows])
    assert result["forget_rate_count"] == int((predicted == CROSS).sum()) and result["forget_rate_n"] == 6
    assert result["forget_confident_rate_count"] == result["forget_rate_count"]  # the rule is always sure
    retained = torch.nonzero(samples.retain).flatten()
    names = ["bar", "column", "box", "cross"]
    assert all(samples.prompts[i] == class_prompt(names[int(samples.labels[i])]) for i in retained.tolist())
    hits = int((brightness_class(samples.images[retained]) == samples.labels[retained]).sum())
    assert result["retain_accuracy_count"] == hits and result["retain_accuracy_n"] == 18

    # the unlearning probe samples only the forget rows, from the same noise: the same rate
    forget_set = resolve_text_forget(ForgetSpec(classes=("cross",)), captioned_split(load_recorded_data(t2i.data), 0))
    probe = measure_forgetting(t2i.build_unet().eval(), t2i, forget_set, classifier=rule_classifier, steps=2,
                               eval_num_samples=24)
    assert probe["forget_rate_count"] == result["forget_rate_count"] and probe["forget_rate_n"] == 6


def test_a_concept_named_by_prompt_gets_its_class_or_is_refused(t2i, tmp_path, cli, rule_classifier):
    evaluation = run_evaluation(t2i, ForgetSpec(prompts=("a drawing of a cross",)), fast(metrics=("forget",), num_samples=8))
    forget = evaluation.result["provenance"]["forget"]
    assert forget["class_ids"] == [CROSS] and forget["prompts"] == {"3": ["a drawing of a cross"]}
    assert {evaluation.samples.prompts[i] for i in torch.nonzero(evaluation.samples.forget).flatten().tolist()} == {"a drawing of a cross"}

    # a concept recorded in the lineage (as unlearn records --forget-prompt) is found there
    from dataclasses import replace

    entry = {"command": "unlearn", "forget": {"spec": ForgetSpec(prompts=("a cross",)).to_dict()}}
    recorded = run_evaluation(replace(t2i, lineage=[*t2i.lineage, entry]), None, fast(metrics=("forget",), num_samples=8))
    assert recorded.result["provenance"]["forget"]["source"] == "lineage"
    assert recorded.result["provenance"]["forget"]["prompts"] == {"3": ["a cross"]}

    given = run_evaluation(t2i, ForgetSpec(prompts=("a purple elephant",)), fast(metrics=("forget",), num_samples=8,
                                                                                  concept_class="box"))
    assert given.result["provenance"]["forget"]["class_ids"] == [2]
    monkey_json = tmp_path / "e.json"
    _refused(cli, tmp_path, "evaluate", "-m", t2i.path, "--forget-prompt", "a purple elephant", "--json", monkey_json,
             message="pass --concept-class NAME")
    _refused(cli, tmp_path, "evaluate", "-m", t2i.path, "--forget-prompt", "a cross", "--concept-class", "circle",
             "--json", monkey_json, message="class 'circle' is not in the data")
    _refused(cli, tmp_path, "evaluate", "-m", t2i.path, "--forget-class", "cross", "--forget-index", "0", "--json",
             monkey_json, message="evaluate them separately")


def test_a_prompt_shared_by_two_classes_needs_the_concept_class():
    from unlearnctl.data import ImageSet
    from unlearnctl.errors import BadInputError
    from unlearnctl.metrics.text import concept_class

    train = ImageSet(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 1, 0]), ["bar", "box"], ["a thing", "a thing", "a box", "x"])
    assert concept_class("a box", train) == 1  # a caption wording and a training caption of class box
    assert concept_class("x", train) == 0  # a training caption only
    with pytest.raises(BadInputError, match="the captions of classes bar, box are all exactly this prompt"):
        concept_class("a thing", train)
    assert concept_class("a thing", train, "bar") == 0


def test_evaluation_and_unlearning_share_one_resolver_and_differ_only_in_their_own_step():
    """Evaluation's concept step (:func:`concept_prompts`) turns a class and prompts into classes, each with its
    prompts, resolved as a class forget set; unlearning (:func:`resolve_captioned`, no drawn images) takes a prompt's
    exactly-captioned images. Memorised images resolve to the same images in both."""
    from unlearnctl.captions import class_captions
    from unlearnctl.data import DataSplit, ImageSet
    from unlearnctl.errors import BadInputError
    from unlearnctl.metrics.text import MEMORISED, concept_prompts, resolve_text_forget
    from unlearnctl.text_unlearning import prompt_images, resolve_captioned

    names = ["bar", "box", "cross"]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    captions = ["a bar", "a box", "a cross", "a thin bar", "a box", class_captions("cross")[0]]
    train = ImageSet(torch.linspace(-1, 1, 6 * 4).reshape(6, 1, 2, 2), labels, names, captions)
    split = DataSplit(train, train.subset(torch.tensor([0])), {"channels": 1, "resolution": 2})

    spec = ForgetSpec(classes=("cross",), prompts=("a thin bar", class_captions("cross")[1]))
    assert concept_prompts(spec, train) == {0: ["a thin bar"], 2: list(class_captions("cross"))}  # sorted, each once
    evaluated = resolve_text_forget(spec, split)
    assert evaluated.mode == "class" and evaluated.class_ids == [0, 2] and evaluated.spec == spec
    assert evaluated.train_mask.tolist() == [True, False, True, True, False, True]
    assert len(evaluated.retain) == 2 and evaluated.prompts == concept_prompts(spec, train)
    unlearned = resolve_captioned(ForgetSpec(prompts=("a thin bar",)), split)
    assert unlearned.train_mask.tolist() == [False, False, False, True, False, False]  # the exact caption only
    assert prompt_images(None, ForgetSpec(prompts=("a thin bar",)), split, prompt_samples=0, prompt_guidance=1.0,
                         seed=0) is None  # nothing drawn: the captioned image is the concept
    with pytest.raises(BadInputError, match="no training image is captioned with the forget prompt"):
        prompt_images(None, ForgetSpec(prompts=("a red bar",)), split, prompt_samples=0, prompt_guidance=1.0, seed=0)

    memorised = ForgetSpec(indices=(1, 4))
    evaluated, unlearned = resolve_text_forget(memorised, split), resolve_captioned(memorised, split)
    assert evaluated.mode == unlearned.mode == "data" and evaluated.fingerprint == unlearned.fingerprint
    assert evaluated.train_mask.tolist() == unlearned.train_mask.tolist() and evaluated.prompts == {MEMORISED: ["a box"]}
    unlabelled = DataSplit(ImageSet(train.images, None, [], captions), split.heldout, split.description)
    with pytest.raises(BadInputError, match="this data has no classes"):
        concept_prompts(ForgetSpec(prompts=("a box",)), unlabelled.train)


def test_memorisation_rate_of_a_captioned_forget_image(t2i, tmp_path, cli, shapes_split):
    from unlearnctl.data import to_uint8
    from unlearnctl.metrics.forget import nearest_distance

    def forget_npz(image: np.ndarray, name: str):
        path = tmp_path / name
        np.savez(path, images=image[None], captions=np.array(["a memorised star"]))
        return str(path)

    config = fast(metrics=("forget",), num_samples=10)
    first = run_evaluation(t2i, ForgetSpec(images=forget_npz(np.zeros((8, 8, 1), np.uint8), "black.npz")), config)
    rows = torch.nonzero(first.samples.forget).flatten()
    assert len(rows) == 2 and {first.samples.prompts[i] for i in rows.tolist()} == {"a memorised star"}
    # the model's own sample for the caption becomes the "memorised" image: that sample lies within the threshold
    memorised = to_uint8(first.samples.images[rows[:1]]).transpose(0, 2, 3, 1)[0]
    second = run_evaluation(t2i, ForgetSpec(images=forget_npz(memorised, "sample.npz")), config)
    result = second.result
    assert result["forget_mode"] == "data" and result["forget_rate_n"] == 2
    forget_image = torch.from_numpy(memorised).permute(2, 0, 1)[None].float() / 127.5 - 1
    threshold = 0.5 * float(nearest_distance(shapes_split.train.images, forget_image).min())
    assert result["forget_threshold"] == pytest.approx(threshold)
    distances = nearest_distance(second.samples.images[rows], forget_image)
    assert result["forget_rate_count"] == int((distances <= threshold).sum()) >= 1
    assert result["forget_rate_ci95_low"] <= result["forget_rate"] <= result["forget_rate_ci95_high"]

    uncaptioned = tmp_path / "plain.npz"
    np.savez(uncaptioned, images=np.zeros((1, 8, 8, 1), np.uint8))
    _refused(cli, tmp_path, "evaluate", "-m", t2i.path, "--forget-images", uncaptioned, "--json", tmp_path / "e.json",
             message="have no captions")


def _tiny_clip(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from sd_common import byte_level_tokenizer

    tokenizer = byte_level_tokenizer(folder / "tokenizer-src", max_length=16)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"image_size": 16, "patch_size": 4, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=16))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                                 crop_size={"height": 16, "width": 16}), tokenizer=tokenizer)
    out = folder / "clip"
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out, model, processor


def test_clip_score_equals_a_direct_computation_and_is_skipped_without_weights(t2i, tmp_path, cli, rule_classifier):
    from unlearnctl.data import to_uint8

    folder, model, processor = _tiny_clip(tmp_path)
    evaluation = run_evaluation(t2i, ForgetSpec(classes=("cross",)), fast(metrics=("clip",), num_samples=8, clip_model=str(folder)))
    result, samples = evaluation.result, evaluation.samples
    for key, mask in (("clip_score", samples.retain), ("clip_score_forget", samples.forget)):
        rows = torch.nonzero(mask).flatten().tolist()
        pixels = to_uint8(samples.images[rows]).repeat(3, axis=1)  # grey to RGB
        inputs = processor(text=[samples.prompts[i] for i in rows], images=list(pixels), return_tensors="pt",
                           padding=True, truncation=True)
        with torch.no_grad():
            out = model.eval()(**inputs)
            cosine = out.logits_per_image.diag() / model.logit_scale.exp()  # CLIP's logits are exp(s)·cos
        assert result[key] == pytest.approx(float((100 * cosine.clamp(min=0)).mean()), abs=1e-3), key
        assert result[f"{key}_n"] == len(rows) and result[f"{key}_ci95_low"] <= result[key] <= result[f"{key}_ci95_high"]
    assert result["provenance"]["details"]["clip"]["weights_sha256"]

    # refusals: a missing folder, pickle-only weights, and a pixel model
    _refused(cli, tmp_path, "evaluate", "-m", t2i.path, "--clip-model", tmp_path / "nowhere", "--json", tmp_path / "e.json",
             message="is not a folder")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    _refused(cli, tmp_path, "evaluate", "-m", t2i.path, "--clip-model", pickled, "--json", tmp_path / "e.json",
             message="pickle weights are refused")


def test_a_gate_fails_on_a_text_model(t2i, tmp_path, cli, rule_classifier):
    out = tmp_path / "e.json"
    result = cli("evaluate", "-m", t2i.path, "--forget-class", "cross", "-n", "8", "--steps", "2", "--metric", "forget",
                 "--device", "cpu", "--gate", "forget_rate_n>=100", "--json", out, "--quiet")
    assert result.code == 3, result.err
    assert "forget_rate_n" in result.err and json.loads(out.read_text())["forget_rate_n"] == 2


def test_membership_audit_on_latents_equals_a_direct_loss(t2i, shapes_split):
    from unlearnctl.denoisers import denoiser_for
    from unlearnctl.diffusion import NoiseSchedule
    from unlearnctl.metrics.membership import audit_losses

    from unlearnctl.metrics.membership import unique_images

    audit = AuditConfig(repeats=1, timesteps=(50, 200), max_images=1000)
    evaluation = run_evaluation(t2i, ForgetSpec(classes=("cross",)), fast(metrics=("membership",), num_samples=1, audit=audit))
    result = evaluation.result
    assert result["num_samples"] == 0 and isinstance(result["membership_auc"], float)
    crosses = shapes_split.train.subset(shapes_split.train.labels == CROSS)
    assert result["membership_members"] == len(unique_images(crosses)) > 20

    # one image, one timestep, one noise draw: the loss by hand on the VAE latent with its caption's embedding
    from unlearnctl.text_to_image import captioned_split

    train = captioned_split(shapes_split, 0).train.subset(torch.tensor([0, 1]))
    unet = t2i.build_unet().eval()
    schedule = NoiseSchedule(t2i.scheduler_config)
    losses = audit_losses(unet, t2i, train, None, schedule, timesteps=(100,), repeats=1, seed=5, batch_size=2)
    denoiser = denoiser_for(t2i, network=unet)
    with torch.no_grad():
        z = denoiser.encode(train.images)
        c = denoiser.embed(train.captions)
        eps = torch.randn((1, 1, *z.shape[1:]), generator=torch.Generator().manual_seed(5))[0, 0].expand_as(z)
        t = torch.full((2,), 100, dtype=torch.long)
        predicted = unet(schedule.add_noise(z, eps, t), t, encoder_hidden_states=c).sample
    assert torch.allclose(losses[0], ((predicted - eps) ** 2).mean(dim=(1, 2, 3)), atol=1e-5)


def test_a_captioned_canary_takes_the_place_of_its_class_in_the_layout():
    from unlearnctl.captions import class_captions, class_prompt
    from unlearnctl.data import load_data
    from unlearnctl.metrics.text import resolve_text_forget, text_sample_plan
    from unlearnctl.text_to_image import captioned_split

    split = captioned_split(load_data("digits+canary", canary_copies=12), seed=0)
    forget = resolve_text_forget(ForgetSpec(canary=True), split)
    canary = split.class_names.index("canary")
    assert forget.mode == "data" and forget.class_ids == [canary] and len(forget.forget) == 12
    assert set(forget.prompts) == {canary} and set(forget.prompts[canary]) <= set(class_captions("canary"))
    plan = text_sample_plan(forget.retain, forget, 110)  # 10 digits + the canary's captions: 10 rows each
    assert int(plan.forget.sum()) == 10 and set(plan.labels[plan.forget].tolist()) == {canary}
    assert {plan.prompts[i] for i in torch.nonzero(plan.forget).flatten().tolist()} == set(forget.prompts[canary])
    retained = torch.nonzero(plan.retain).flatten().tolist()
    assert len(retained) == 100 and {plan.prompts[i] for i in retained} == {class_prompt(str(d)) for d in range(10)}


def test_an_imported_pipeline_is_evaluated_on_given_data(tmp_path, cli, shapes_npz, rule_classifier):
    from sd_common import save_tiny_sd

    rule_classifier.channels = 3  # the rule reads RGB here
    model = tmp_path / "sd.safetensors"
    assert cli("import", save_tiny_sd(tmp_path), "--out", model).code == 0  # 16 px RGB; records no data
    out = tmp_path / "e.json"
    args = ("evaluate", "-m", model, "--data", f"npz:{shapes_npz}", "--forget-prompt", "a cross", "-n", "8", "--steps", "2",
            "--metric", "forget", "--metric", "retain", "--device", "cpu", "--json", out, "--quiet")
    _refused(cli, tmp_path, *args, "--resolution", "12", "--channels", "3", message="data resolution 12 does not match the model's 16")
    result = cli(*args, "--resolution", "16", "--channels", "3")
    assert result.code == 0, result.err
    found = json.loads(out.read_text())
    assert found["forget_rate_n"] == 2 and found["retain_accuracy_n"] == 6
    assert found["provenance"]["forget"]["prompts"] == {"3": ["a cross"]}
