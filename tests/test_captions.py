"""Digit captions (unlearnctl/captions.py) and captioned data: folders with metadata.jsonl or .txt, npz captions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unlearnctl.captions import CAPTION_TEMPLATES, DIGIT_WORDS, caption_words, class_prompt, digit_captions
from unlearnctl.data import fingerprint, load_data, read_images
from unlearnctl.errors import BadInputError

DIGITS = [str(i) for i in range(10)]


# ------------------------------------------------------------------------------------------ digit captions


def test_class_prompt_names_the_digit_by_word():
    assert class_prompt("8") == "a handwritten digit eight"
    assert class_prompt("canary") == "a picture of a canary"
    assert set(digit_captions([0] * 30, ["canary"], seed=0)) == {"a picture of a canary", "a drawing of a canary", "a canary"}
    assert "canary" in caption_words(["1", "canary"]) and "picture" in caption_words(["canary"])


def test_digit_captions_name_their_class_with_variety():
    labels = np.arange(10).repeat(40)
    captions = digit_captions(labels, DIGITS, seed=0)
    assert len(captions) == len(labels)
    for label, caption in zip(labels, captions):
        words = caption.replace(",", "").split()
        assert DIGIT_WORDS[label] in words or str(label) in words, caption
        assert not any(DIGIT_WORDS[other] in words or str(other) in words for other in range(10) if other != label)
    for digit in range(10):  # every digit gets several wordings, by word and by numeral
        own = {c for label, c in zip(labels, captions) if label == digit}
        assert len(own) >= 4
        assert any(DIGIT_WORDS[digit] in c.split() for c in own) and any(str(digit) in c.split() for c in own)


def test_digit_captions_are_deterministic_given_the_seed():
    labels = list(range(10)) * 5
    assert digit_captions(labels, DIGITS, seed=3) == digit_captions(labels, DIGITS, seed=3)
    assert digit_captions(labels, DIGITS, seed=3) != digit_captions(labels, DIGITS, seed=4)
    with pytest.raises(BadInputError, match="label 10"):
        digit_captions([10], DIGITS)


def test_caption_words_cover_every_caption():
    words = set(caption_words(DIGITS))
    assert set(DIGIT_WORDS) <= words and not any(w.isdigit() for w in words)
    for template in CAPTION_TEMPLATES:
        for digit in range(10):
            text = template.format(word=DIGIT_WORDS[digit], numeral=digit).replace(",", "")
            assert {w for w in text.split() if not w.isdigit()} <= words


# ------------------------------------------------------------------------------------------ captioned data


def _write_images(folder, names, value=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8), (value + 40 * i) % 256, dtype=np.uint8), "L").save(folder / name)


def _jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


def test_folder_with_metadata_jsonl_and_txt_files(tmp_path):
    _write_images(tmp_path / "a", ["x.png", "y.png"])
    _write_images(tmp_path / "b", ["z.png", "w.png"], value=100)
    _jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a/x.png", "text": "first"}, {"file_name": "b/z.png", "text": "third"},
                                         {"file_name": "b/w.png", "text": "fourth", "extra": 1}])
    (tmp_path / "a" / "y.txt").write_text("second\n")
    (tmp_path / "b" / "z.txt").write_text("loses to metadata.jsonl")
    images = read_images(tmp_path)
    assert images.class_names == ["a", "b"]
    assert images.captions == ["first", "second", "fourth", "third"]  # in file order: a/x, a/y, b/w, b/z
    assert images.subset(images.labels == 1).captions == ["fourth", "third"]


def test_flat_folder_with_txt_captions_splits_with_its_images(tmp_path):
    names = [f"{i:02d}.png" for i in range(10)]
    _write_images(tmp_path, names)
    for i, name in enumerate(names):
        (tmp_path / name).with_suffix(".txt").write_text(f"caption {i}")
    split = load_data(f"folder:{tmp_path}", split_seed=1)
    everything = read_images(tmp_path)
    for part in (split.train, split.heldout):
        for image, caption in zip(part.images, part.captions):
            i = int(caption.split()[1])
            assert bool((everything.images[i] == image).all())
    assert sorted(split.train.captions + split.heldout.captions) == sorted(everything.captions)


def test_captions_change_the_fingerprint(tmp_path):
    _write_images(tmp_path, ["p.png", "q.png", "r.png", "s.png", "t.png"])
    plain = load_data(f"folder:{tmp_path}").description["fingerprint"]
    for name in "pqrst":
        (tmp_path / f"{name}.txt").write_text(f"image {name}")
    captioned = load_data(f"folder:{tmp_path}")
    assert captioned.train.captions is not None and captioned.description["fingerprint"] != plain
    (tmp_path / "p.txt").write_text("image p, reworded")
    (tmp_path / "q.txt").write_text("image q, reworded")
    assert load_data(f"folder:{tmp_path}").description["fingerprint"] != captioned.description["fingerprint"]
    images = captioned.train.images
    assert fingerprint(images, None) == fingerprint(images, None, None)  # no captions: fingerprints as before


def test_npz_captions(tmp_path):
    images = np.arange(6 * 64, dtype=np.uint8).reshape(6, 8, 8)
    path = tmp_path / "c.npz"
    np.savez(path, images=images, labels=np.array([0, 1, 0, 1, 0, 1]), captions=np.array([f"c{i}" for i in range(6)]))
    read = read_images(path)
    assert read.captions == [f"c{i}" for i in range(6)]
    split = load_data(f"npz:{path}")
    assert sorted(split.train.captions + split.heldout.captions) == read.captions
    assert split.train.subset(split.train.labels == 0).captions == [c for c in split.train.captions if int(c[1]) % 2 == 0]


@pytest.mark.parametrize("captions, message", [
    (np.array(["a", "b"]), "holds 2 captions .* for 6 images"),
    (np.arange(6), "'captions' must be strings"),
    (np.array([b"a"] * 6), "'captions' must be strings"),
    (np.array(["a"] * 6, dtype=object), "object arrays"),
])
def test_bad_npz_captions(tmp_path, captions, message):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((6, 8, 8), dtype=np.uint8), captions=captions)
    with pytest.raises(BadInputError, match=message):
        read_images(path)


@pytest.mark.parametrize("rows, message", [
    ([{"file_name": "p.png", "text": "ok"}, "{not json"], r"metadata.jsonl line 2 is not valid JSON"),
    ([{"file_name": "gone.png", "text": "ok"}], r"line 1 names 'gone.png', which is not an image"),
    ([{"file_name": "p.png", "text": 8}], r"line 1: 'text' must be a string, got int"),
    ([{"file_name": "p.png"}], r"line 1 must be a JSON object with 'file_name' and 'text'"),
    ([{"file_name": "p.png", "text": "a"}, {"file_name": "p.png", "text": "b"}], r"line 2 names 'p.png' a second time"),
    ([{"file_name": "p.png", "text": "a"}, "", {"file_name": "q.png", "text": "b"}], r"2 of 4 images .* have no caption \(first: .*r.png\)"),
])
def test_bad_metadata_jsonl(tmp_path, rows, message):
    _write_images(tmp_path, ["p.png", "q.png", "r.png", "s.png"])
    _jsonl(tmp_path / "metadata.jsonl", rows)
    with pytest.raises(BadInputError, match=message):
        load_data(f"folder:{tmp_path}")


def test_some_txt_captions_missing(tmp_path):
    _write_images(tmp_path, ["p.png", "q.png", "r.png", "s.png"])
    (tmp_path / "q.txt").write_text("only q")
    with pytest.raises(BadInputError, match=r"3 of 4 images .* have no caption \(first: .*p.png\)"):
        read_images(tmp_path)
