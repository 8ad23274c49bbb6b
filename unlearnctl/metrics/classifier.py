"""The domain classifier: labels generated images and provides features for FID (docs/metrics.md).

By default a network trained by the tool on the data set's train split — the two-convolution
``digitnet`` for small or grey images (MNIST-like data, where Inception features mean little), a
CIFAR-style ``resnet20`` for RGB data of at least 32 px (:mod:`.classifier_archs`). It is cached per
training-set fingerprint and architecture (a safetensors file with its held-out accuracy in the
metadata), so every evaluation of models trained on the same data uses the same classifier.

Users may bring their own (``--classifier PATH``): safetensors weights of a named architecture with
metadata naming its classes and input (:func:`load_user_classifier`, docs/metrics.md); its output order
is mapped to the data's classes by name. Pickles are never loaded.
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
from unlearnctl.metrics.classifier_archs import build_net, load_weights, trainable_arch
from unlearnctl.progress import ProgressFn, report

ARCH_VERSION = 1  # bump when the architecture or recipe changes: invalidates caches


def cache_dir() -> Path:
    """``$UNLEARNCTL_CACHE/classifiers`` (default ``~/.cache/unlearnctl/classifiers``)."""
    return Path(os.environ.get("UNLEARNCTL_CACHE", Path.home() / ".cache" / "unlearnctl")) / "classifiers"


@dataclass
class DomainClassifier:
    """A classifier with the facts an evaluation records about it.

    The tool's own (``source="trained"``) reads images in [-1, 1] at the data's size; a user's
    (``source="user"``, ``--classifier``) declares its input: ``resolution``, ``channels`` and torchvision-style
    ``mean``/``std`` of pixels in [0, 1]. :meth:`prepare` turns data images into that input, and
    ``class_map`` (set by :meth:`map_to`) turns the classifier's output order into the data's class indices.
    """

    net: nn.Module  # .body(x) -> N×D features, .head -> N×classes logits (classifier_archs)
    class_names: list[str]  # in the classifier's output order
    data_fingerprint: str | None  # training set it was trained on (None: a user's classifier)
    heldout_accuracy: float | None  # on the data's held-out split (user: after mapping, measured on load)
    sha256: str | None = None  # of the saved file, once saved or loaded
    path: Path | None = None  # the saved file (torch-fidelity's extractor loads it from here)
    arch: str = "digitnet"
    channels: int = 1
    resolution: int | None = None  # input size; None = any (the tool's own: the data's)
    mean: tuple[float, ...] | None = None  # None: the input is the image in [-1, 1] unchanged
    std: tuple[float, ...] | None = None
    source: str = "trained"  # trained (by the tool) or user (--classifier)
    class_map: torch.Tensor | None = None  # classifier output index -> data class index (-1: not a data class)
    data_class_names: list[str] | None = None  # the data's classes, once mapped
    heldout_n: int | None = None  # held-out images behind a user classifier's heldout_accuracy

    @property
    def feature_dim(self) -> int:
        return self.net.head.in_features

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Data images (``N×C×H×W`` in [-1, 1]) to the classifier's input: grey repeated to RGB, resized to
        ``resolution`` (bilinear, antialiased) and normalised with ``mean``/``std``."""
        x = images.float()
        if x.shape[1] != self.channels:
            require(x.shape[1] == 1 and self.channels == 3,
                    f"the classifier reads {self.channels}-channel images, the data has {x.shape[1]} channels")
            x = x.expand(-1, 3, -1, -1)
        if self.resolution is not None and tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            x = nn.functional.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                                          align_corners=False, antialias=True)
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = ((x + 1) / 2 - mean) / std  # [-1, 1] -> [0, 1] -> normalised
        return x

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Class scores in the classifier's own output order, ``N×len(class_names)``."""
        self.net.eval()
        return torch.cat([self.net(self.prepare(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])

    def probabilities(self, images: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
        """Softmax probabilities per *data* class, ``N×num_classes`` (default: the classifier's classes in the
        data's order); a classifier class the data lacks contributes to no column."""
        probabilities = self.logits(images).softmax(dim=1)
        if self.class_map is None:
            return probabilities
        columns = max(int(self.class_map.max()) + 1, num_classes or 0)
        mapped = torch.zeros((len(probabilities), columns), dtype=probabilities.dtype)
        known = self.class_map >= 0
        mapped.index_add_(1, self.class_map[known], probabilities[:, known])
        return mapped

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Data class index per image (images ``N×C×H×W`` in [-1, 1]); -1 for a class the data lacks."""
        predicted = self.logits(images).argmax(dim=1)
        return predicted if self.class_map is None else self.class_map[predicted]

    @torch.inference_mode()
    def features(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Penultimate-layer features, ``N×feature_dim`` (the FID feature space)."""
        self.net.eval()
        return torch.cat([self.net.body(self.prepare(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])

    def map_to(self, data_class_names: list[str]) -> "DomainClassifier":
        """Map the output order to the data's classes by name; a data class the classifier lacks is bad input.

        Output classes the data does not have map to -1: a sample predicted as one counts as no data class
        (not forgotten, not retained). The identity order leaves ``class_map`` unset.
        """
        missing = [name for name in data_class_names if name not in self.class_names]
        if missing:
            raise BadInputError(f"the classifier has no class {missing[0]!r} of the data (its classes: "
                                f"{', '.join(self.class_names[:20])}{', ...' if len(self.class_names) > 20 else ''}); "
                                "give a classifier trained on every data class, named as the data names them")
        self.data_class_names = list(data_class_names)
        if self.class_names == list(data_class_names):
            self.class_map = None
            return self
        position = {name: i for i, name in enumerate(data_class_names)}
        self.class_map = torch.tensor([position.get(name, -1) for name in self.class_names], dtype=torch.long)
        return self


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (digits are not centred identically)."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def _augment_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The CIFAR recipe, per image: a random crop of the image padded by 1/8 of its size (reflected), and a
    horizontal flip with probability 1/2."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")  # N×C×(H+2p)×(W+2p)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # N×1×H×1
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # N×1×1×W
    cropped = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), cropped.flip(3), cropped)


def _recipe(arch: str, net: nn.Module, total: int):
    """Optimizer, schedule and augmentation of each trainable architecture."""
    if arch == "digitnet":  # AdamW, one-cycle to 3e-3, ±1-pixel shifts (unchanged since ARCH_VERSION 1)
        optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=total)
        return optimizer, schedule, _augment
    # ResNets: SGD with Nesterov momentum, one-cycle to 0.1, weight decay 5e-4, crop + flip
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total, pct_start=0.15)
    return optimizer, schedule, _augment_crop_flip


def train_classifier(split: DataSplit, *, arch: str = "auto", epochs: int = 30, batch_size: int = 128, seed: int = 0,
                     progress: ProgressFn = None, device: str | torch.device = "cpu") -> DomainClassifier:
    """Train the domain classifier on ``split.train`` and measure it on ``split.heldout``.

    Args:
        arch: ``auto`` (``resnet20`` for RGB data of at least 32 px, else ``digitnet``), an alias
            (``resnet``) or a name in :data:`~.classifier_archs.TRAINABLE`.
        epochs: passes over the train split (steps = epochs × ⌊train images / batch_size⌋, at least 1 per epoch).
        device: where to train; the result lives on the CPU.
    """
    train = split.train
    require(train.labels is not None, "the domain classifier needs labelled data (class sub-folders or npz labels)")
    num_classes = len(train.class_names)
    require(num_classes >= 2, f"the domain classifier needs at least 2 classes, found {num_classes}")
    require(epochs >= 1, f"epochs must be at least 1, got {epochs}")
    channels, resolution = train.images.shape[1], train.images.shape[-1]
    arch = trainable_arch(arch, channels, resolution)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = torch.device(device)
    net = build_net(arch, channels, num_classes).to(device)
    steps_per_epoch = max(1, len(train) // batch_size)
    total = epochs * steps_per_epoch
    optimizer, schedule, augment = _recipe(arch, net, total)
    net.train()
    for step in range(total):
        index = torch.randint(0, len(train), (batch_size,), generator=generator)
        logits = net(augment(train.images[index], generator).to(device))
        loss = nn.functional.cross_entropy(logits, train.labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        report(progress, "classifier", step + 1, total, loss=loss.item())
    classifier = DomainClassifier(net.cpu().eval(), list(train.class_names), split.description["fingerprint"], 0.0,
                                  arch=arch, channels=channels, resolution=resolution)
    classifier.heldout_accuracy = heldout_accuracy(classifier, split.heldout)
    return classifier


def heldout_accuracy(classifier: DomainClassifier, heldout: ImageSet) -> float:
    """Share of held-out images classified as their class (``nan`` without labelled held-out images)."""
    if heldout.labels is None or len(heldout) == 0:
        return float("nan")
    return float((classifier.predict(heldout.images) == heldout.labels).float().mean())


def save_classifier(classifier: DomainClassifier, path: str | Path) -> Path:
    """Write the classifier as safetensors with the metadata of :func:`load_classifier`'s format."""
    from safetensors.torch import save

    metadata = {
        "kind": CLASSIFIER_KIND, "arch": classifier.arch, "arch_version": str(ARCH_VERSION),
        "num_classes": str(len(classifier.class_names)), "class_names": json.dumps(classifier.class_names),
        "channels": str(classifier.channels),
        "mean": json.dumps(list(classifier.mean or [0.5] * classifier.channels)),
        "std": json.dumps(list(classifier.std or [0.5] * classifier.channels)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if classifier.resolution is not None:
        metadata["resolution"] = str(classifier.resolution)
    if classifier.data_fingerprint is not None:
        metadata.update(data_fingerprint=classifier.data_fingerprint, heldout_accuracy=repr(classifier.heldout_accuracy))
    payload = save({k: v.contiguous() for k, v in classifier.net.state_dict().items()}, metadata=metadata)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, payload)
    classifier.sha256, classifier.path = _sha256_bytes(payload), Path(path)
    return Path(path)


CLASSIFIER_KIND = "unlearnctl-classifier"
USER_HELDOUT_CAP = 2000  # a user classifier's held-out accuracy is measured on at most this many images
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar")
CONVERT_HINT = ("save the state dict with safetensors.torch.save_file(model.state_dict(), 'W.safetensors') and add the "
                "metadata with `unlearnctl classifier import`")


def check_safetensors_file(path: str | Path, what: str = "classifier") -> Path:
    """Refuse anything but a safetensors file before reading it: a pickle (``torch.save``) is never loaded."""
    path = Path(path)
    require(path.is_file(), f"{what} file {path} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(9)
    is_pickle = head[:1] == b"\x80" or head[:4] == b"PK\x03\x04" or path.suffix.lower() in PICKLE_SUFFIXES
    require(not is_pickle, f"{path} is a pickle (torch.save) file; {what}s are read only from weights-only .safetensors "
            f"files, so loading never runs code: {CONVERT_HINT}")
    require(len(head) == 9 and head[8:9] == b"{", f"{path} is not a safetensors file; {CONVERT_HINT}")
    return path


def _json_list(metadata: dict[str, str], key: str, path: Path) -> list:
    try:
        value = json.loads(metadata[key])
    except (KeyError, ValueError):
        raise BadInputError(f"{path}: metadata {key!r} is missing or not JSON; see docs/metrics.md (bring your own "
                            "classifier)") from None
    require(isinstance(value, list) and len(value) > 0, f"{path}: metadata {key!r} must be a non-empty JSON list")
    return value


def classifier_from_metadata(state: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> DomainClassifier:
    """Build a :class:`DomainClassifier` from a state dict and the documented metadata (docs/metrics.md).

    Files written by the tool before the ``arch`` key existed are read as ``digitnet`` taking [-1, 1] input.
    """
    require(metadata.get("kind") == CLASSIFIER_KIND,
            f"{path} is not an unlearnctl classifier (its metadata lacks kind={CLASSIFIER_KIND}); {CONVERT_HINT}")
    class_names = [str(name) for name in _json_list(metadata, "class_names", path)]
    require(len(set(class_names)) == len(class_names), f"{path}: class_names repeat a name")
    try:
        channels = int(metadata.get("channels", "3"))
        num_classes = int(metadata.get("num_classes", len(class_names)))
        resolution = int(metadata["resolution"]) if "resolution" in metadata else None
    except ValueError:
        raise BadInputError(f"{path}: metadata channels, num_classes and resolution must be integers") from None
    require(num_classes == len(class_names), f"{path}: num_classes {num_classes} but {len(class_names)} class_names")
    require(channels in (1, 3), f"{path}: channels must be 1 or 3, got {channels}")
    legacy = "arch" not in metadata
    arch = metadata.get("arch", "digitnet")
    mean = std = None
    if not legacy:
        require(resolution is not None and 4 <= resolution <= 1024, f"{path}: metadata resolution must be 4..1024")
        mean = [float(v) for v in _json_list(metadata, "mean", path)]
        std = [float(v) for v in _json_list(metadata, "std", path)]
        require(len(mean) in (1, channels) and len(std) in (1, channels),
                f"{path}: mean and std need 1 or {channels} values")
        require(all(v > 0 for v in std), f"{path}: std values must be positive")
        mean, std = tuple(mean * (channels // len(mean))), tuple(std * (channels // len(std)))
        if all(v == 0.5 for v in mean + std):
            mean = std = None  # ((x+1)/2 - 0.5)/0.5 = x: the [-1, 1] images as they are
    net = load_weights(build_net(arch, channels, num_classes, metadata.get("stem")), arch, state, num_classes)
    heldout = float(metadata["heldout_accuracy"]) if "heldout_accuracy" in metadata else None
    source = "trained" if "data_fingerprint" in metadata else "user"
    return DomainClassifier(net.eval(), class_names, metadata.get("data_fingerprint"), heldout, arch=arch,
                            channels=channels, resolution=resolution, mean=mean, std=std, source=source)


def load_classifier(path: str | Path) -> DomainClassifier:
    """Read a classifier file: safetensors weights of a named architecture with metadata (docs/metrics.md)."""
    from safetensors import safe_open

    from unlearnctl.checkpoint import file_sha256

    path = check_safetensors_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:
        raise BadInputError(f"{path} is not a readable safetensors file: {cause_of(exc)}") from None
    classifier = classifier_from_metadata(state, metadata, path)
    classifier.sha256, classifier.path = file_sha256(path), path
    return classifier


def _sha256_bytes(payload: bytes) -> str:
    import hashlib

    return hashlib.sha256(payload).hexdigest()


def cache_path(split: DataSplit, folder: str | Path | None = None, arch: str = "auto") -> Path:
    """The cache file of ``split``'s classifier: keyed by the training-set fingerprint and the architecture
    (``digitnet`` keeps its original name, so existing caches stay valid)."""
    arch = trainable_arch(arch, split.description["channels"], split.description["resolution"])
    suffix = "" if arch == "digitnet" else f"-{arch}"
    return Path(folder or cache_dir()) / f"{split.description['fingerprint']}{suffix}-v{ARCH_VERSION}.safetensors"


def load_or_train_classifier(split: DataSplit, cache_dir: str | Path | None = None, progress: ProgressFn = None, *,
                             cache: bool = True, arch: str = "auto") -> DomainClassifier:
    """The cached classifier for this training set and architecture, training (and caching) it on first use.

    Args:
        cache_dir: folder of cached classifiers (default :func:`cache_dir`).
        cache: ``False`` always trains and writes nothing.
        arch: as :func:`train_classifier` (``auto``: ``resnet20`` for RGB ≥ 32 px, else ``digitnet``).
    """
    arch = trainable_arch(arch, split.description["channels"], split.description["resolution"])
    path = cache_path(split, cache_dir, arch)
    if cache and path.is_file():
        try:
            classifier = load_classifier(path)
            if classifier.data_fingerprint == split.description["fingerprint"] and classifier.arch == arch:
                return classifier
        except BadInputError:
            pass
        path.unlink(missing_ok=True)  # a damaged or foreign cache entry is rebuilt, not trusted
    classifier = train_classifier(split, arch=arch, progress=progress)
    if cache:
        try:
            save_classifier(classifier, path)
        except OSError:
            pass  # a read-only cache only costs retraining next time
    return classifier


def load_user_classifier(path: str | Path, split: DataSplit) -> DomainClassifier:
    """A user's classifier (``--classifier``) mapped to ``split``'s classes, its held-out accuracy measured.

    Bad input (exit 2): not a safetensors file (pickles are refused), metadata missing, weights that do not
    fit the named architecture, a data class the classifier lacks, RGB data for a grey classifier.
    """
    classifier = load_classifier(path)
    require(len(split.class_names) >= 2, "a classifier scores labelled data; this data has no classes")
    data_channels = split.description["channels"]
    require(data_channels == classifier.channels or (data_channels == 1 and classifier.channels == 3),
            f"the classifier reads {classifier.channels}-channel images, the data has {data_channels} channels")
    classifier.source = "user"  # given with --classifier, even when the tool trained it
    classifier.map_to(split.class_names)
    heldout = split.heldout.subset(torch.arange(min(len(split.heldout), USER_HELDOUT_CAP)))  # the split is already shuffled
    classifier.heldout_accuracy, classifier.heldout_n = heldout_accuracy(classifier, heldout), len(heldout)
    return classifier


def resolve_classifier(split: DataSplit, path: str | Path | None = None, cache_dir: str | Path | None = None,
                       progress: ProgressFn = None) -> DomainClassifier:
    """The user's classifier at ``path`` (mapped to the data's classes), else the tool's cached one."""
    if path is not None:
        return load_user_classifier(path, split)
    return load_or_train_classifier(split, cache_dir, progress)


def describe(classifier: DomainClassifier) -> dict[str, Any]:
    """What an evaluation records about the classifier (provenance)."""
    info = {"kind": "domain-classifier" if classifier.source == "trained" else "user-classifier",
            "arch": classifier.arch, "arch_version": ARCH_VERSION, "data_fingerprint": classifier.data_fingerprint,
            "heldout_accuracy": classifier.heldout_accuracy, "sha256": classifier.sha256,
            "path": str(classifier.path) if classifier.path else None}
    if classifier.source == "user":
        info.update(class_names=classifier.class_names, resolution=classifier.resolution, channels=classifier.channels,
                    mean=list(classifier.mean) if classifier.mean else None,
                    std=list(classifier.std) if classifier.std else None, heldout_n=classifier.heldout_n)
        if classifier.data_class_names is not None:
            info["class_map"] = {name: classifier.class_names.index(name) for name in classifier.data_class_names}
    return info
