"""Class-conditional models without a null class (issue 17, item 6).

The usual layout of conditional DDPMs has one class embedding per class (``num_class_embeds`` = K); the
models ``unlearnctl train`` builds have K + 1, the last the null class of classifier-free guidance. A K-layout
model imports, samples, unlearns, evaluates and exports with its labels kept (no label dropout), and refuses
what needs a null class: guidance, and images to forget whose class is unknown.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHAPE_NAMES
from test_inputs import refused

K = len(SHAPE_NAMES)
GUIDANCE_LINE = "this model has no null class, so classifier-free guidance is unavailable; use --guidance 1"
NO_CLASS_LINE = "the --forget-images have no class, and this model has no null class to condition them on"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNLEARNCTL_CACHE", str(tmp_path_factory.getbasetemp() / "classifier-cache"))


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> Path:
    """A user's conditional DDPM: ``UNet2DModel(num_class_embeds=K)`` saved by ``DDPMPipeline.save_pretrained``."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, num_class_embeds=K)
    folder = tmp_path_factory.mktemp("user") / "ddpm"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def imported(pipeline_folder, shapes_npz, tmp_path_factory) -> Path:
    from unlearnctl.cli.app import run

    out = tmp_path_factory.mktemp("imported") / "m.safetensors"
    assert run(["import", str(pipeline_folder), "--out", str(out), "--data", f"npz:{shapes_npz}"]) == 0
    return out


@pytest.fixture
def label_spy(monkeypatch) -> list:
    """The labels of every training-loss call of ``fit_denoiser`` (train, relearn-attack), in order."""
    import unlearnctl.training as training

    seen, loss = [], training.denoising_loss

    def spy(denoiser, x, labels, generator):
        seen.append(labels)
        return loss(denoiser, x, labels, generator)

    monkeypatch.setattr(training, "denoising_loss", spy)
    return seen


def test_import_accepts_one_class_embedding_per_class_and_says_guidance_is_unavailable(cli, pipeline_folder, shapes_npz, tmp_path):
    from unlearnctl.checkpoint import load_checkpoint

    out = tmp_path / "m.safetensors"
    result = cli("import", pipeline_folder, "--out", out, "--data", f"npz:{shapes_npz}")
    assert result.code == 0, result
    assert "no null class: classifier-free guidance is unavailable" in result.out
    model = load_checkpoint(out)
    assert model.conditional and model.unet_config["num_class_embeds"] == K and model.num_classes == K
    assert model.null_class is None


def test_the_null_class_is_the_extra_embedding_only(shapes_split):
    from reliability_common import untrained_checkpoint

    with_null = untrained_checkpoint(shapes_split)  # what `unlearnctl train` builds: K + 1 embeddings
    assert with_null.unet_config["num_class_embeds"] == K + 1 and with_null.null_class == K
    from unlearnctl.checkpoint.model import null_class_of

    assert null_class_of({"num_class_embeds": K}, K) is None
    assert null_class_of({"num_class_embeds": None}, K) is None
    assert null_class_of({"num_class_embeds": K + 1}, 0) is None  # classes unknown (imported without --data)


def test_data_must_fit_either_layout(shapes_split):
    from unlearnctl.data import check_compatible
    from unlearnctl.errors import BadInputError

    desc = shapes_split.description
    config = {"sample_size": 8, "in_channels": 1}
    check_compatible(desc, {**config, "num_class_embeds": K}, True)
    check_compatible(desc, {**config, "num_class_embeds": K + 1}, True)
    with pytest.raises(BadInputError, match=rf"^data has {K} classes, the model {K + 2} class embeddings \(for {K + 1} classes "
                                            rf"and a null class, or {K + 2} classes without one\); give the --data the model was trained on$"):
        check_compatible(desc, {**config, "num_class_embeds": K + 2}, True)
    # a model trained on K - 1 classes with a null class has K embeddings: data of K classes would read its
    # null class as a real one; the recorded class count refuses it
    with pytest.raises(BadInputError, match=rf"^data has {K} classes, the model was trained on {K - 1}; give the --data"):
        check_compatible(desc, {**config, "num_class_embeds": K}, True, recorded_classes=K - 1)


def test_sample_per_class_and_guidance_is_refused_before_anything_is_written(cli, imported, tmp_path):
    result = cli("sample", "-m", imported, "--out", tmp_path / "g.png", "--per-class", "2", "--steps", "2",
                 "--npz", tmp_path / "s.npz", "--device", "cpu", "--quiet")
    assert result.code == 0, result
    assert sorted(np.load(tmp_path / "s.npz")["labels"].tolist()) == sorted(list(range(K)) * 2)
    empty = tmp_path / "refused"
    empty.mkdir()
    line = refused(cli, empty, "sample", "-m", imported, "--out", empty / "g.png", "--guidance", "3", "--steps", "2",
                   "--device", "cpu", "--quiet")
    assert line == f"error: {GUIDANCE_LINE}"
    line = refused(cli, empty, "evaluate", "-m", imported, "--guidance", "2", "-n", "8", "--steps", "2",
                   "--json", empty / "e.json", "--device", "cpu", "--quiet")
    assert line == f"error: {GUIDANCE_LINE}"


@pytest.mark.parametrize("method", ["naive", "siss", "salun"])
def test_unlearn_keeps_every_label_and_drops_none(cli, imported, tmp_path, monkeypatch, method):
    import unlearnctl.training as training
    from unlearnctl.checkpoint import load_checkpoint

    def no_dropout(*args, **kwargs):
        raise AssertionError("a model without a null class has no label to drop to")

    monkeypatch.setattr(training, "drop_labels", no_dropout)
    out = tmp_path / "u.safetensors"
    extra = ("--saliency-batches", "1") if method == "salun" else ()
    result = cli("unlearn", "-m", imported, "--out", out, "--method", method, "--forget-class", "bar", "--steps", "2",
                 "--batch-size", "8", "--label-dropout", "0.5", *extra, "--device", "cpu", "--quiet")
    assert result.code == 0, result
    model = load_checkpoint(out)
    assert model.null_class is None and model.lineage[-1]["method"] == method


def test_salun_relabels_with_real_classes_only(imported):
    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.denoisers import denoiser_for
    from unlearnctl.methods.base import MethodContext

    model = load_checkpoint(imported)
    ctx = MethodContext(denoiser=denoiser_for(model), checkpoint=model, forget_set=None, retain=None, forget=None,
                        batch_size=8, label_dropout=0.1, generator=torch.Generator().manual_seed(0))
    c = torch.arange(K).repeat(50)  # every class; K − 1 is a real class here, not a null class to relabel freely
    other = ctx.other_labels(c)
    assert bool((other != c).all()) and bool(((other >= 0) & (other < K)).all())


def test_forget_images_of_unknown_class_are_refused(cli, imported, shapes_split, tmp_path):
    from unlearnctl.data import to_uint8

    images = tmp_path / "inputs"
    images.mkdir()
    pixels = to_uint8(shapes_split.train.images[:3])  # N×C×H×W
    np.savez(images / "f.npz", images=pixels.transpose(0, 2, 3, 1))
    out = tmp_path / "out"
    out.mkdir()
    line = refused(cli, out, "unlearn", "-m", imported, "--out", out / "u.safetensors", "--method", "naive",
                   "--forget-images", images / "f.npz", "--steps", "1", "--device", "cpu", "--quiet")
    assert line.startswith(f"error: {NO_CLASS_LINE}")
    line = refused(cli, out, "evaluate", "-m", imported, "--forget-images", images / "f.npz", "-n", "8", "--steps", "2",
                   "--json", out / "e.json", "--device", "cpu", "--quiet")
    assert line.startswith(f"error: {NO_CLASS_LINE}")


def test_evaluate_samples_every_class_and_scores_the_forgotten_one(cli, imported, tmp_path):
    out = tmp_path / "e.json"
    result = cli("evaluate", "-m", imported, "--forget-class", "bar", "-n", "8", "--steps", "2", "--metric", "forget",
                 "--metric", "retain", "--metric", "membership", "--audit-repeats", "1", "--audit-timesteps", "50",
                 "--json", out, "--device", "cpu", "--quiet")
    assert result.code == 0, result
    data = json.loads(out.read_text())
    assert data["provenance"]["model"]["conditional"] is True
    assert data["forget_rate_n"] == 2  # 8 samples over the K = 4 classes: 2 of the forgotten one
    assert data["retain_accuracy_n"] == 6  # every other class is retained (no label read as a null class)
    assert data["membership_auc"] is not None


def test_export_round_trip_keeps_the_layout(cli, imported, shapes_npz, tmp_path):
    from diffusers import UNet2DModel

    from unlearnctl.checkpoint import load_checkpoint

    assert cli("export", "-m", imported, "--diffusers-dir", tmp_path / "d").code == 0
    unet = UNet2DModel.from_pretrained(tmp_path / "d", subfolder="unet")
    assert unet.config.num_class_embeds == K
    back = tmp_path / "back.safetensors"
    assert cli("import", tmp_path / "d", "--out", back, "--data", f"npz:{shapes_npz}").code == 0
    original, again = load_checkpoint(imported), load_checkpoint(back)
    assert again.null_class is None and again.conditional
    assert all(torch.equal(original.state_dict[k], again.state_dict[k]) for k in original.state_dict)


def test_train_with_one_embedding_per_class_keeps_labels(cli, shapes_npz, tmp_path, label_spy):
    from unlearnctl.checkpoint import load_checkpoint

    seen = label_spy
    config = tmp_path / "unet.json"
    config.write_text(json.dumps({"num_class_embeds": K}))
    out = tmp_path / "t.safetensors"
    result = cli("train", "--data", f"npz:{shapes_npz}", "--size", "tiny", "--unet-config", config, "--steps", "3",
                 "--batch-size", "16", "--label-dropout", "0.5", "--out", out, "--device", "cpu", "--quiet")
    assert result.code == 0, result
    assert len(seen) == 3 and all(labels is not None and bool(((labels >= 0) & (labels < K)).all()) for labels in seen)
    model = load_checkpoint(out)
    assert model.conditional and model.null_class is None and model.unet_config["num_class_embeds"] == K
    config.write_text(json.dumps({"num_class_embeds": K + 2}))
    empty = tmp_path / "refused"
    empty.mkdir()
    line = refused(cli, empty, "train", "--data", f"npz:{shapes_npz}", "--size", "tiny", "--unet-config", config,
                   "--steps", "3", "--out", empty / "t.safetensors", "--device", "cpu", "--quiet")
    assert f"the model {K + 2} class embeddings" in line


def test_relearn_attack_trains_on_labels_without_dropout(cli, imported, tmp_path, label_spy):
    from unlearnctl.checkpoint import load_checkpoint

    seen = label_spy
    out = tmp_path / "a.safetensors"
    result = cli("relearn-attack", "--model", imported, "--out", out, "--aux", "retain", "--steps", "2", "--batch-size", "8",
                 "--label-dropout", "0.5", "--device", "cpu", "--quiet")
    assert result.code == 0, result
    assert len(seen) == 2 and all(labels is not None and bool(((labels >= 0) & (labels < K)).all()) for labels in seen)
    assert load_checkpoint(out).null_class is None
