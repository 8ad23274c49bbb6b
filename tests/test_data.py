"""Data sources, the deterministic split, fingerprints and forget specifications."""

import numpy as np
import pytest
import torch
from PIL import Image

from unlearnctl.data import ForgetSpec, canary_image, load_data, load_recorded_data, read_images, resolve_forget
from unlearnctl.errors import BadInputError


def test_digits_split_is_deterministic_and_disjoint():
    a, b = load_data("digits"), load_data("digits")
    assert a.description["fingerprint"] == b.description["fingerprint"]
    assert len(a.train) + len(a.heldout) == 1797
    assert a.train.images.shape[1:] == (1, 8, 8)
    assert a.train.images.min() >= -1 and a.train.images.max() <= 1
    assert load_data("digits", split_seed=1).description["fingerprint"] != a.description["fingerprint"]


def test_canary_scenario_adds_copies_to_train_only():
    split = load_data("digits+canary")
    canary = split.class_names.index("canary")
    copies = int((split.train.labels == canary).sum())
    assert copies == split.description["canary_copies"] == round(0.02 * (len(split.train) - copies))
    assert int((split.heldout.labels == canary).sum()) == 0
    expected = torch.from_numpy(canary_image()).float() / 127.5 - 1
    assert torch.equal(split.train.images[split.train.labels == canary][0, 0], expected)


def test_recorded_data_reloads_and_detects_changes(shapes_split, shapes_npz):
    assert load_recorded_data(shapes_split.description).description["fingerprint"] == shapes_split.description["fingerprint"]
    changed = dict(shapes_split.description, fingerprint="0" * 16)
    with pytest.raises(BadInputError, match="changed"):
        load_recorded_data(changed)


def test_folder_source_with_class_subfolders(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    split = load_data(f"folder:{tmp_path}", heldout_fraction=0.34)
    assert split.class_names == ["cat", "dog"]
    assert len(split.train) + len(split.heldout) == 6


def test_read_images_converts_resizes_or_refuses_the_size(tmp_path):
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / name).mkdir()
        Image.new("RGB", (12, 12), colour).save(tmp_path / name / "a.png")
    read = read_images(tmp_path, channels=1, resolution=8)
    assert read.images.shape == (2, 1, 8, 8) and read.class_names == ["blue", "red"]
    assert read.labels.tolist() == [0, 1] and read.images.min() >= -1 and read.images.max() <= 1
    assert read_images(tmp_path).images.shape == (2, 3, 12, 12)
    with pytest.raises(BadInputError, match=r"forget images in .* are 12×12, the model's 8×8; resize them first"):
        read_images(tmp_path, exact_size=8, role="forget images")


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "no images"),
    (lambda p: (p.mkdir(), Image.new("L", (8, 8)).save(p / "a.png"), Image.new("L", (9, 9)).save(p / "b.png")), "different sizes"),
    (lambda p: (p.mkdir(), (p / "a.png").write_bytes(b"not an image")), "cannot read"),
])
def test_bad_folders_are_refused(tmp_path, make, message):
    folder = tmp_path / "images"
    make(folder)
    with pytest.raises(BadInputError, match=message):
        load_data(f"folder:{folder}")


def test_npz_must_be_uint8(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((10, 8, 8), dtype=np.float32))
    with pytest.raises(BadInputError, match="uint8"):
        load_data(f"npz:{tmp_path / 'x.npz'}")


def test_unknown_source_is_refused():
    with pytest.raises(BadInputError, match="unknown data source"):
        load_data("imagenet")


def test_forget_by_class_index_canary_and_images(shapes_split, tmp_path):
    by_class = resolve_forget(ForgetSpec(classes=("box",)), shapes_split)
    assert by_class.mode == "class" and by_class.class_ids == [2]
    assert bool((by_class.forget.labels == 2).all()) and not bool((by_class.retain.labels == 2).any())
    assert len(by_class.forget) + len(by_class.retain) == len(shapes_split.train)
    by_index = resolve_forget(ForgetSpec(indices=(0, 5)), shapes_split)
    assert by_index.mode == "data" and len(by_index.forget) == 2
    np.savez(tmp_path / "f.npz", images=np.zeros((3, 8, 8), dtype=np.uint8))
    from_file = resolve_forget(ForgetSpec(indices=(1,), images=str(tmp_path / "f.npz")), shapes_split)
    assert len(from_file.forget) == 4
    canary = resolve_forget(ForgetSpec(canary=True), load_data("digits+canary"))
    assert canary.mode == "data" and len(canary.forget) == canary.forget.labels.eq(10).sum()


@pytest.mark.parametrize("spec, message", [
    (ForgetSpec(), "empty"),
    (ForgetSpec(classes=("giraffe",)), "not in the data"),
    (ForgetSpec(classes=("bar", "column", "box", "cross")), "whole training set"),
    (ForgetSpec(indices=(10**6,)), "outside"),
    (ForgetSpec(canary=True), "no canary"),
])
def test_bad_forget_specs_are_refused(shapes_split, spec, message):
    with pytest.raises(BadInputError, match=message):
        resolve_forget(spec, shapes_split)
