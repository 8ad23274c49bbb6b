"""Shared fixtures: tiny data built here and tiny models trained once per session.

``shapes`` is a toy 8×8 data set of four easy classes (bar, column, box, cross) with jitter, so a tiny
UNet learns it in seconds and a nearest-centroid classifier recognises it perfectly — small enough
for 2 CPU cores, real enough that forgetting and relearning can be measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHAPE_NAMES = ("bar", "column", "box", "cross")


def shape_image(kind: int, rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((8, 8), dtype=np.float64)
    shift = rng.integers(-1, 2)
    if kind == 0:
        img[3 + shift: 5 + shift, 1:7] = 1
    elif kind == 1:
        img[1:7, 3 + shift: 5 + shift] = 1
    elif kind == 2:
        img[1:7, 1:7] = 1
        img[2 + (shift > 0): 6 - (shift < 0), 2 + (shift > 0): 6 - (shift < 0)] = 0
    else:
        for i in range(8):
            img[i, i] = img[i, 7 - i] = 1
    img *= rng.uniform(0.7, 1.0)
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)


def make_shapes(per_class: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for kind in range(len(SHAPE_NAMES)):
        for _ in range(per_class):
            images.append(shape_image(kind, rng))
            labels.append(kind)
    return (np.stack(images) * 255).round().astype(np.uint8), np.array(labels, dtype=np.int64)


@pytest.fixture(scope="session")
def shapes_npz(tmp_path_factory) -> Path:
    """An ``.npz`` data set (240 images, 4 classes) usable as ``npz:PATH``."""
    path = tmp_path_factory.mktemp("data") / "shapes.npz"
    images, labels = make_shapes()
    np.savez(path, images=images, labels=labels, class_names=np.array(SHAPE_NAMES))
    return path


@pytest.fixture(scope="session")
def shapes_split(shapes_npz):
    from unlearnctl.data import load_data

    return load_data(f"npz:{shapes_npz}")


def _train_tiny(split, folder, conditional: bool):
    from unlearnctl.checkpoint import save_checkpoint
    from unlearnctl.training import TrainConfig, train_model

    config = TrainConfig(steps=400, batch_size=64, lr=2e-3, warmup_steps=20, seed=0)
    checkpoint = train_model(split, conditional=conditional, preset="tiny", config=config, device="cpu")
    name = "tiny-conditional" if conditional else "tiny-unconditional"
    save_checkpoint(checkpoint, folder / f"{name}.safetensors")
    return checkpoint


@pytest.fixture(scope="session")
def tiny_conditional(shapes_split, tmp_path_factory):
    """A tiny class-conditional model trained on ``shapes`` (saved; ``.path`` is set)."""
    return _train_tiny(shapes_split, tmp_path_factory.mktemp("models"), conditional=True)


@pytest.fixture(scope="session")
def tiny_unconditional(shapes_split, tmp_path_factory):
    """A tiny unconditional model trained on ``shapes`` (saved; ``.path`` is set)."""
    return _train_tiny(shapes_split, tmp_path_factory.mktemp("models"), conditional=False)


def nearest_centroid_labels(images: torch.Tensor, split) -> torch.Tensor:
    """Classify images by the nearest class mean of the training split (perfect on clean shapes)."""
    train = split.train
    centroids = torch.stack([train.images[train.labels == c].mean(0) for c in range(len(train.class_names))])
    distances = torch.cdist(images.flatten(1), centroids.flatten(1))
    return distances.argmin(dim=1)


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-300:]!r}, err={self.err[-300:]!r})"


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: ``cli("train", "--out", p)`` returns ``.code``, ``.out``, ``.err``."""
    from unlearnctl.cli.app import run

    def invoke(*args) -> CliResult:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory):
    """A fresh ``$UNLEARNCTL_CACHE`` seeded with 2-epoch domain classifiers of the digits and digits+canary (the
    evaluation's own would take a minute each to train)."""
    from unlearnctl.data import load_data
    from unlearnctl.metrics.classifier import cache_path, save_classifier, train_classifier

    root = tmp_path_factory.mktemp("cache")
    for source in ("digits", "digits+canary"):
        split = load_data(source)
        save_classifier(train_classifier(split, epochs=2), cache_path(split, root / "classifiers"))
    return root


@pytest.fixture(scope="session")
def text_model(shapes_npz, tmp_path_factory) -> Path:
    """A tiny text-to-image model trained on the shapes with generated captions (a few steps: the code path;
    its 2-step autoencoder decodes grey images)."""
    from unlearnctl.checkpoint import save_checkpoint
    from unlearnctl.data import load_data
    from unlearnctl.text_to_image import train_text_to_image
    from unlearnctl.training import TrainConfig

    path = tmp_path_factory.mktemp("t2i") / "t2i.safetensors"
    model = train_text_to_image(load_data(f"npz:{shapes_npz}"), config=TrainConfig(steps=4, batch_size=8, warmup_steps=1),
                                autoencoder_steps=2, device="cpu")
    save_checkpoint(model, path)
    return path
