"""The domain classifier: user classifiers (``--classifier``, ``classifier import``) and the ResNet architecture."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from unlearnctl.errors import BadInputError
from unlearnctl.metrics.classifier import (
    cache_path, load_classifier, load_user_classifier, save_classifier, train_classifier,
)
from unlearnctl.metrics.classifier_archs import TRAINABLE, trainable_arch

FAST = ("-n", "40", "--steps", "5", "--quiet")
RGB_NAMES = ("red", "green", "blue")


def make_rgb(per_class: int = 80, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Easy RGB classes: a square of one primary colour at a random place on a noisy grey background."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    side = size // 3
    for kind in range(len(RGB_NAMES)):
        for _ in range(per_class):
            img = rng.uniform(0.3, 0.5, (size, size, 3))
            y, x = rng.integers(0, size - side, 2)
            img[y:y + side, x:x + side] = 0.1
            img[y:y + side, x:x + side, kind] = rng.uniform(0.8, 1.0)
            images.append(np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1))
            labels.append(kind)
    return (np.stack(images) * 255).round().astype(np.uint8), np.array(labels, dtype=np.int64)


@pytest.fixture(scope="module")
def rgb_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("rgb") / "rgb.npz"
    images, labels = make_rgb()
    np.savez(path, images=images, labels=labels, class_names=np.array(RGB_NAMES))
    return path


def _user_file(classifier, path, order: list[int] | None = None, drop: str | None = None):
    """Write ``classifier``'s weights as a user classifier whose outputs come in ``order`` (indices of its classes)."""
    state = {k: v.clone() for k, v in classifier.net.state_dict().items()}
    order = list(range(len(classifier.class_names))) if order is None else order
    names = [classifier.class_names[i] for i in order]
    state["head.weight"], state["head.bias"] = state["head.weight"][order], state["head.bias"][order]
    if drop is not None:
        keep = [i for i, name in enumerate(names) if name != drop]
        names = [names[i] for i in keep]
        state["head.weight"], state["head.bias"] = state["head.weight"][keep], state["head.bias"][keep]
    metadata = {"kind": "unlearnctl-classifier", "arch": classifier.arch, "num_classes": str(len(names)),
                "class_names": json.dumps(names), "resolution": str(classifier.resolution),
                "channels": str(classifier.channels), "mean": "[0.5]", "std": "[0.5]"}
    save_file(state, str(path), metadata=metadata)
    return path


def test_arch_choice_keeps_digits_on_the_two_convolution_net(shapes_split):
    assert trainable_arch("auto", 1, 8) == "digitnet" and trainable_arch("auto", 3, 16) == "digitnet"
    assert trainable_arch("auto", 3, 32) == "resnet20" and trainable_arch("resnet", 1, 8) == "resnet20"
    with pytest.raises(BadInputError, match="unknown classifier architecture 'vit'"):
        trainable_arch("vit", 3, 32)
    # the cache key holds the architecture; digitnet keeps its original file name (existing caches stay valid)
    assert cache_path(shapes_split, "c").name == f"{shapes_split.description['fingerprint']}-v1.safetensors"
    assert cache_path(shapes_split, "c", "resnet8").name.endswith("-resnet8-v1.safetensors")
    from unlearnctl.cli.evaluate_cmds import TRAINABLE_NAMES

    assert [name.split()[0] for name in TRAINABLE_NAMES[:len(TRAINABLE)]] == list(TRAINABLE)


def test_resnet_forward_shapes_and_feature_split():
    net = TRAINABLE["resnet20"](3, 7)
    x = torch.randn(2, 3, 32, 32)
    assert net.body(x).shape == (2, 64) and net(x).shape == (2, 7)
    assert sum(p.numel() for p in net.parameters()) < 300_000  # ResNet-20: ≈ 0.27 M parameters


def test_classifier_train_resnet_reaches_high_heldout_accuracy_and_prints_it(cli, rgb_npz, tmp_path):
    result = cli("classifier", "train", "--data", f"npz:{rgb_npz}", "--arch", "resnet8", "--epochs", "5", "--batch-size", "32", "-q",
                 "--classifier-cache", tmp_path)
    assert result.code == 0, result
    assert "held-out accuracy (resnet8):" in result.out
    accuracy = float(result.out.split("held-out accuracy (resnet8):")[1].split()[0])
    assert accuracy >= 0.9
    cached = list(tmp_path.glob("*-resnet8-v1.safetensors"))
    assert len(cached) == 1 and load_classifier(cached[0]).arch == "resnet8"
    again = cli("classifier", "train", "--data", f"npz:{rgb_npz}", "--arch", "resnet8", "--json", "-q",
                "--classifier-cache", tmp_path)
    info = json.loads(again.out)
    assert info["cached"] is True and info["arch"] == "resnet8" and info["heldout_accuracy"] == pytest.approx(accuracy, abs=1e-4)


def test_permuted_user_classifier_scores_as_the_identity_order(shapes_classifier, shapes_split, tmp_path):
    identity = load_user_classifier(_user_file(shapes_classifier, tmp_path / "id.safetensors"), shapes_split)
    permuted = load_user_classifier(_user_file(shapes_classifier, tmp_path / "perm.safetensors", [2, 0, 3, 1]), shapes_split)
    assert identity.class_map is None and permuted.class_map.tolist() == [2, 0, 3, 1]
    images = shapes_split.heldout.images
    assert torch.equal(permuted.predict(images), identity.predict(images))
    assert torch.equal(identity.predict(images), shapes_classifier.predict(images))
    assert permuted.heldout_accuracy == identity.heldout_accuracy == shapes_classifier.heldout_accuracy
    assert permuted.heldout_n == len(shapes_split.heldout)


def test_evaluate_with_user_classifier_maps_classes_and_records_sha256(cli, tiny_conditional, shapes_classifier, tmp_path):
    runs = {}
    for name, order in (("id", None), ("perm", [3, 1, 0, 2])):
        path = _user_file(shapes_classifier, tmp_path / f"{name}.safetensors", order)
        out = tmp_path / f"{name}.json"
        result = cli("evaluate", "--model", tiny_conditional.path, "--forget-class", "box", "--metric", "forget",
                     "--metric", "retain", *FAST, "--classifier", path, "--json", out)
        assert result.code == 0, result
        runs[name] = json.loads(out.read_text())
        recorded = runs[name]["provenance"]["classifier"]
        assert recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and recorded["kind"] == "user-classifier"
    assert runs["perm"]["provenance"]["classifier"]["class_map"] == {"bar": 2, "column": 1, "box": 3, "cross": 0}
    for key in ("forget_rate", "retain_accuracy"):
        assert runs["perm"][key] == runs["id"][key]
    own = tmp_path / "own.json"
    assert cli("evaluate", "--model", tiny_conditional.path, "--forget-class", "box", "--metric", "forget",
               "--metric", "retain", *FAST, "--json", own).code == 0
    assert json.loads(own.read_text())["forget_rate"] == runs["id"]["forget_rate"]  # same weights, same answer


def test_missing_class_exits_2_naming_it_and_writes_nothing(cli, tiny_conditional, shapes_classifier, tmp_path):
    path = _user_file(shapes_classifier, tmp_path / "three.safetensors", [2, 0, 3, 1], drop="column")
    out = tmp_path / "e.json"
    result = cli("evaluate", "--model", tiny_conditional.path, "--forget-class", "box", *FAST, "--classifier", path,
                 "--json", out)
    assert result.code == 2 and "no class 'column'" in result.err and not out.exists()


@pytest.mark.parametrize("name", ["clf.pt", "clf.safetensors"])
def test_pickle_classifier_is_refused(cli, tiny_conditional, shapes_classifier, tmp_path, name):
    path = tmp_path / name
    torch.save(shapes_classifier.net.state_dict(), path)
    out = tmp_path / "e.json"
    result = cli("evaluate", "--model", tiny_conditional.path, *FAST, "--classifier", path, "--json", out)
    assert result.code == 2 and "is a pickle (torch.save) file" in result.err and not out.exists()


def test_broken_or_undescribed_files_are_refused(shapes_classifier, shapes_split, tmp_path):
    state = {k: v.clone() for k, v in shapes_classifier.net.state_dict().items()}
    save_file(state, str(tmp_path / "bare.safetensors"))
    with pytest.raises(BadInputError, match="not an unlearnctl classifier"):
        load_user_classifier(tmp_path / "bare.safetensors", shapes_split)
    nan = _user_file(shapes_classifier, tmp_path / "nan.safetensors")
    state["head.bias"][0] = float("nan")
    save_file(state, str(nan), metadata=dict(__import__("safetensors").safe_open(str(nan), "pt").metadata()))
    with pytest.raises(BadInputError, match="head.bias holds NaN"):
        load_user_classifier(nan, shapes_split)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(BadInputError, match="not a safetensors file"):
        load_user_classifier(tmp_path / "junk.safetensors", shapes_split)


def test_import_torchvision_resnet18_reads_like_torchvision(cli, shapes_split, tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    weights = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(weights))
    out = tmp_path / "r18.safetensors"
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    args = ("classifier", "import", "--arch", "resnet18", "--weights", weights, "--resolution", "32",
            "--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std)), "-q")
    assert cli(*args, "--classes", "cross,box,column,bar", "--out", out).code == 0
    classifier = load_user_classifier(out, shapes_split)  # grey 8×8 data: repeated to RGB, resized to 32
    images = shapes_split.heldout.images[:6]
    x = torch.nn.functional.interpolate(images.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear",
                                        align_corners=False, antialias=True)
    x = ((x + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(classifier.logits(images), expected, atol=1e-4)
    assert classifier.feature_dim == 512 and classifier.class_map.tolist() == [3, 2, 1, 0]
    # refusals: weights of another architecture, too few classes for the head, --out = --weights
    assert "do not fit architecture resnet34" in cli(*args[:3], "resnet34", *args[4:], "--classes", "a,b,c,d",
                                                      "--out", tmp_path / "x.safetensors").err
    assert cli(*args, "--classes", "a,b,c", "--out", tmp_path / "y.safetensors").code == 2
    assert cli(*args, "--classes", "a,b,c,d", "--out", weights).code == 2
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_rgb_data_is_refused_by_a_grey_classifier(shapes_classifier, rgb_npz, tmp_path):
    from unlearnctl.data import load_data

    path = _user_file(shapes_classifier, tmp_path / "grey.safetensors")
    with pytest.raises(BadInputError, match="reads 1-channel images, the data has 3"):
        load_user_classifier(path, load_data(f"npz:{rgb_npz}"))


def test_user_classifier_is_the_fid_feature_space(shapes_classifier, shapes_split, tmp_path):
    from unlearnctl.metrics.fidelity import CLASSIFIER_EXTRACTOR, DomainClassifierFeatures, classifier_space, to_pixels

    classifier = load_user_classifier(_user_file(shapes_classifier, tmp_path / "u.safetensors", [1, 0, 2, 3]), shapes_split)
    space = classifier_space(classifier)
    assert space.weights_sha256 == classifier.sha256 and space.provenance["feature_dim"] == 128
    extractor = DomainClassifierFeatures(CLASSIFIER_EXTRACTOR, ["penultimate"], feature_extractor_weights_path=str(classifier.path))
    pixels = to_pixels(shapes_split.heldout.images[:8])
    assert torch.allclose(extractor(pixels)[0], shapes_classifier.features(shapes_split.heldout.images[:8]), atol=1e-5)


def test_saved_resnet_round_trips(rgb_npz, tmp_path):
    from unlearnctl.data import load_data

    split = load_data(f"npz:{rgb_npz}")
    classifier = train_classifier(split, arch="resnet8", epochs=1)
    loaded = load_classifier(save_classifier(classifier, tmp_path / "r.safetensors"))
    assert loaded.arch == "resnet8" and loaded.resolution == 16 and loaded.mean is None and loaded.source == "trained"
    assert torch.equal(loaded.logits(split.heldout.images), classifier.logits(split.heldout.images))


def test_cifar_stem_resnet18_needs_stem_cifar(cli, shapes_split, tmp_path):
    import torchvision

    model = torchvision.models.resnet18(num_classes=4)
    model.conv1, model.maxpool = torch.nn.Conv2d(3, 64, 3, padding=1, bias=False), torch.nn.Identity()
    weights = tmp_path / "w.safetensors"
    save_file(model.eval().state_dict(), str(weights))
    args = ("classifier", "import", "--arch", "resnet18", "--weights", weights, "--resolution", "32", "--mean", "0.5",
            "--std", "0.5", "--classes", "bar,column,box,cross", "-q", "--out")
    assert cli(*args, tmp_path / "plain.safetensors").code == 2
    assert cli(*args, tmp_path / "c.safetensors", "--stem", "cifar").code == 0
    classifier = load_user_classifier(tmp_path / "c.safetensors", shapes_split)
    images = shapes_split.heldout.images[:4]
    x = torch.nn.functional.interpolate(images.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear",
                                        align_corners=False, antialias=True)
    with torch.no_grad():
        assert torch.allclose(classifier.logits(images), model(x), atol=1e-4)  # mean = std = 0.5: [-1, 1] as is
