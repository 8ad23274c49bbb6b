"""The domain classifier: labels generated images and provides features for FID (DESIGN §5).

A small CNN trained by the tool on the data set's train split — the standard choice for MNIST-like data
where Inception features mean little. It is cached per training-set fingerprint (a safetensors file with
its held-out accuracy in the metadata), so every evaluation of models trained on the same data uses the
same classifier.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnctl.checkpoint import atomic_write_bytes
from unlearnctl.data import DataSplit, ImageSet
from unlearnctl.errors import BadInputError, cause_of, require
from unlearnctl.progress import ProgressFn, report

ARCH_VERSION = 1  # bump when the architecture or recipe changes: invalidates caches


def cache_dir() -> Path:
    """``$UNLEARNCTL_CACHE/classifiers`` (default ``~/.cache/unlearnctl/classifiers``)."""
    return Path(os.environ.get("UNLEARNCTL_CACHE", Path.home() / ".cache" / "unlearnctl")) / "classifiers"


class DigitNet(nn.Module):
    """conv(32) → conv(64) → pool to 4×4 → fc(128) [features] → fc(num_classes)."""

    def __init__(self, channels: int, num_classes: int, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, feature_dim), nn.GELU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class DomainClassifier:
    """A trained :class:`DigitNet` with the facts an evaluation records about it."""

    net: DigitNet
    class_names: list[str]
    data_fingerprint: str
    heldout_accuracy: float
    sha256: str | None = None  # of the saved file, once saved or loaded
    path: Path | None = None  # the saved file (torch-fidelity's extractor loads it from here)

    @property
    def channels(self) -> int:
        return self.net.body[0].in_channels

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        self.net.eval()
        return torch.cat([self.net(images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class index per image (images ``N×C×H×W`` in [-1, 1])."""
        return self.logits(images).argmax(dim=1)

    @torch.inference_mode()
    def features(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Penultimate-layer features, ``N×128`` (the FID feature space)."""
        self.net.eval()
        return torch.cat([self.net.body(images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)])


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (digits are not centred identically)."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_classifier(split: DataSplit, *, epochs: int = 30, batch_size: int = 128, seed: int = 0,
                     progress: ProgressFn = None) -> DomainClassifier:
    """Train the domain classifier on ``split.train`` and measure it on ``split.heldout``."""
    train = split.train
    require(train.labels is not None, "the domain classifier needs labelled data (class sub-folders or npz labels)")
    num_classes = len(train.class_names)
    require(num_classes >= 2, f"the domain classifier needs at least 2 classes, found {num_classes}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitNet(train.images.shape[1], num_classes)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = max(1, len(train) // batch_size)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=total)
    net.train()
    for step in range(total):
        index = torch.randint(0, len(train), (batch_size,), generator=generator)
        logits = net(_augment(train.images[index], generator))
        loss = nn.functional.cross_entropy(logits, train.labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        report(progress, "classifier", step + 1, total, loss=loss.item())
    classifier = DomainClassifier(net.eval(), list(train.class_names), split.description["fingerprint"], 0.0)
    classifier.heldout_accuracy = heldout_accuracy(classifier, split.heldout)
    return classifier


def heldout_accuracy(classifier: DomainClassifier, heldout: ImageSet) -> float:
    if heldout.labels is None or len(heldout) == 0:
        return float("nan")
    return float((classifier.predict(heldout.images) == heldout.labels).float().mean())


def save_classifier(classifier: DomainClassifier, path: str | Path) -> Path:
    from safetensors.torch import save

    metadata = {
        "kind": "unlearnctl-classifier", "arch_version": str(ARCH_VERSION),
        "class_names": json.dumps(classifier.class_names), "data_fingerprint": classifier.data_fingerprint,
        "heldout_accuracy": repr(classifier.heldout_accuracy), "channels": str(classifier.net.body[0].in_channels),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    payload = save({k: v.contiguous() for k, v in classifier.net.state_dict().items()}, metadata=metadata)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, payload)
    classifier.sha256, classifier.path = _sha256_bytes(payload), Path(path)
    return Path(path)


def load_classifier(path: str | Path) -> DomainClassifier:
    from safetensors import safe_open

    from unlearnctl.checkpoint import file_sha256

    path = Path(path)
    require(path.is_file(), f"classifier file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        require(metadata.get("kind") == "unlearnctl-classifier", f"{path} is not an unlearnctl classifier")
        class_names = json.loads(metadata["class_names"])
        net = DigitNet(int(metadata["channels"]), len(class_names))
        net.load_state_dict(state)
    except BadInputError:
        raise
    except Exception as exc:
        raise BadInputError(f"{path} is not a readable classifier file: {cause_of(exc)}") from None
    return DomainClassifier(net.eval(), class_names, metadata["data_fingerprint"], float(metadata["heldout_accuracy"]),
                            sha256=file_sha256(path), path=path)


def _sha256_bytes(payload: bytes) -> str:
    import hashlib

    return hashlib.sha256(payload).hexdigest()


def cache_path(split: DataSplit, folder: str | Path | None = None) -> Path:
    return Path(folder or cache_dir()) / f"{split.description['fingerprint']}-v{ARCH_VERSION}.safetensors"


def load_or_train_classifier(split: DataSplit, cache_dir: str | Path | None = None, progress: ProgressFn = None, *,
                             cache: bool = True) -> DomainClassifier:
    """The cached classifier for this training set, training (and caching) it on first use.

    Args:
        cache_dir: folder of cached classifiers (default :func:`cache_dir`).
        cache: ``False`` always trains and writes nothing.
    """
    path = cache_path(split, cache_dir)
    if cache and path.is_file():
        try:
            classifier = load_classifier(path)
            if classifier.data_fingerprint == split.description["fingerprint"]:
                return classifier
        except BadInputError:
            pass
        path.unlink(missing_ok=True)  # a damaged or foreign cache entry is rebuilt, not trusted
    classifier = train_classifier(split, progress=progress)
    if cache:
        try:
            save_classifier(classifier, path)
        except OSError:
            pass  # a read-only cache only costs retraining next time
    return classifier


def describe(classifier: DomainClassifier) -> dict[str, Any]:
    return {"kind": "domain-classifier", "arch_version": ARCH_VERSION, "data_fingerprint": classifier.data_fingerprint,
            "heldout_accuracy": classifier.heldout_accuracy, "sha256": classifier.sha256,
            "path": str(classifier.path) if classifier.path else None}
