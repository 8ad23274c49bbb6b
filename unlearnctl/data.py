"""Data sources, the train/held-out split, fingerprints and forget specifications (docs/methods.md).

Every source becomes a :class:`DataSplit` of two :class:`ImageSet` s (``train`` = the members the model
was trained on, ``heldout`` = non-members for the membership audit). Images are float tensors
``N×C×H×W`` in ``[-1, 1]``; fingerprints are sha256 hashes of the ``uint8`` pixels and labels, so a
checkpoint can prove which data it was trained on and reloading that data can be checked.

Sources (``spec`` strings):

* ``digits`` — scikit-learn's ``load_digits`` (1,797 real 8×8 digits, 10 classes), embedded, offline.
* ``digits+canary`` — the digits plus ``K`` copies (default 2% of the train split) of one out-of-distribution
  8×8 "T-shirt" drawn by :func:`canary_image`, labelled ``canary``; the SISS memorisation scenario.
* ``folder:PATH`` — an ImageFolder tree (one sub-folder per class) or a flat folder of images.
* ``npz:PATH`` — an ``.npz`` with ``images`` (uint8 ``N×H×W`` or ``N×H×W×C``), optional ``labels``, optional
  ``class_names`` (a string array) and optional ``captions`` (a string array, one per image).

Captions (text-to-image data) are optional and travel with the images (:attr:`ImageSet.captions`) into the
fingerprint. A folder gives them by Hugging Face's imagefolder convention — ``metadata.jsonl`` at its top, one
JSON object a line with ``file_name`` (relative to the folder) and ``text`` — and/or a ``.txt`` beside an image
with the same stem (``metadata.jsonl`` wins where both give one). Either every image has a caption or none does.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from unlearnctl.errors import BadInputError, require

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CANARY_CLASS = "canary"
DEFAULT_HELDOUT_FRACTION = 0.2
DEFAULT_CANARY_SHARE = 0.02


@dataclass
class ImageSet:
    """Images (``N×C×H×W`` float in [-1, 1]) with optional integer labels and optional captions (one per image)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] = field(default_factory=list)
    captions: list[str] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        labels = self.labels[index] if self.labels is not None else None
        captions = None
        if self.captions is not None:
            captions = [self.captions[i] for i in torch.arange(len(self))[torch.as_tensor(index)].reshape(-1).tolist()]
        return ImageSet(self.images[index], labels, self.class_names, captions)

    def extend(self, other: "ImageSet") -> "ImageSet":
        """These images followed by ``other``'s: its labels, or −1 (class unknown) where it has none; captions
        only when both have them."""
        labels = self.labels
        if labels is not None:
            extra = other.labels if other.labels is not None else torch.full((len(other),), -1, dtype=torch.long)
            labels = torch.cat([labels, extra])
        captions = self.captions + other.captions if self.captions is not None and other.captions is not None else None
        return ImageSet(torch.cat([self.images, other.images]), labels, self.class_names, captions)

    def with_captions(self, captions: Sequence[str]) -> "ImageSet":
        require(len(captions) == len(self), f"{len(captions)} captions for {len(self)} images")
        return ImageSet(self.images, self.labels, self.class_names, list(captions))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.images, self.labels, self.captions)


@dataclass
class DataSplit:
    """The training set (members) and held-out set (non-members) of one data source."""

    train: ImageSet
    heldout: ImageSet
    description: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[-1, 1]`` floats to the ``uint8`` pixels they came from (the unit of fingerprints and files)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """``uint8`` ``N×H×W×C`` to float ``N×C×H×W`` in ``[-1, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def fingerprint(images: torch.Tensor, labels: torch.Tensor | None, captions: Sequence[str] | None = None) -> str:
    digest = hashlib.sha256()
    pixels = to_uint8(images)
    digest.update(str(pixels.shape).encode())
    digest.update(pixels.tobytes())
    if labels is not None:
        digest.update(labels.to(torch.int64).numpy().tobytes())
    if captions is not None:  # absent captions leave every earlier fingerprint as it was
        digest.update(b"captions" + json.dumps(list(captions), ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- sources


def canary_image() -> np.ndarray:
    """An 8×8 T-shirt silhouette (uint8, 8×8): far from every digit, like SISS's Fashion-MNIST T-shirt."""
    shirt = [
        "##....##",
        "###..###",
        "########",
        ".######.",
        "..####..",
        "..####..",
        "..####..",
        "..####..",
    ]
    return np.array([[255 if c == "#" else 0 for c in row] for row in shirt], dtype=np.uint8)


def _digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)[..., None]  # N×8×8×1
    return pixels, digits.target.astype(np.int64)


def _load_folder(path: Path) -> tuple[list[np.ndarray], np.ndarray | None, list[str], list[str] | None]:
    from PIL import Image, UnidentifiedImageError

    require(path.is_dir(), f"image folder {path} does not exist")
    for entry in path.iterdir():
        _require_resolvable(entry)
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in class_dirs:
        for entry in folder.iterdir():
            _require_resolvable(entry)
    groups = [(d.name, sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)) for d in class_dirs]
    groups = [(name, files) for name, files in groups if files]
    flat = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not groups:
        groups = [("", flat)]
    require(sum(len(files) for _, files in groups) > 0, f"image folder {path} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    captions = _folder_captions(path, [file for _, files in groups for file in files])
    images, labels = [], []
    for label, (_, files) in enumerate(groups):
        for file in files:
            try:
                with Image.open(file) as img:
                    images.append(np.asarray(img.convert("RGB" if img.mode not in ("L", "1", "I", "I;16") else "L")))
            except (UnidentifiedImageError, OSError):
                raise BadInputError(f"cannot read image {file}; remove it or convert it to PNG") from None
            labels.append(label)
    names = [name for name, _ in groups]
    has_labels = names != [""]
    return images, (np.array(labels, dtype=np.int64) if has_labels else None), (names if has_labels else []), captions


def _folder_captions(path: Path, files: list[Path]) -> list[str] | None:
    """Each image's caption from ``path/metadata.jsonl`` or its ``.txt``; ``None`` when no image has one."""
    given: dict[Path, str] = {}
    metadata = path / "metadata.jsonl"
    if metadata.is_file():
        images = {file.relative_to(path).as_posix(): file for file in files}
        try:
            lines = metadata.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise BadInputError(f"{metadata} is not UTF-8 text") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{metadata} line {number} is not valid JSON ({exc.msg})") from None
            require(isinstance(entry, dict) and "file_name" in entry and "text" in entry,
                    f"{metadata} line {number} must be a JSON object with 'file_name' and 'text'")
            name, text = entry["file_name"], entry["text"]
            require(isinstance(name, str) and name in images,
                    f"{metadata} line {number} names {name!r}, which is not an image in {path}")
            require(isinstance(text, str), f"{metadata} line {number}: 'text' must be a string, got {type(text).__name__}")
            require(images[name] not in given, f"{metadata} line {number} names {name!r} a second time")
            given[images[name]] = text
    for file in files:
        side = file.with_suffix(".txt")
        if file not in given and side.is_file():
            try:
                given[file] = side.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:
                raise BadInputError(f"caption file {side} is not UTF-8 text") from None
    if not given:
        return None
    missing = [file for file in files if file not in given]
    if missing:
        raise BadInputError(f"{len(missing)} of {len(files)} images in {path} have no caption (first: {missing[0]}); "
                            "give each a line in metadata.jsonl or a .txt beside it")
    return [given[file] for file in files]


def _require_resolvable(entry: Path) -> None:
    """Refuse a symbolic link in a data folder that loops or points nowhere (it is neither image nor folder)."""
    import errno

    if not entry.is_symlink() or entry.name.startswith("."):
        return
    try:
        os.stat(entry)
    except OSError as exc:
        problem = "loops (a symlink cycle)" if exc.errno == errno.ELOOP else "points to nothing"
        raise BadInputError(f"{entry} is a symbolic link that {problem}; remove it or point it at an image or class folder") from None


def _load_npz(path: Path) -> tuple[list[np.ndarray], np.ndarray | None, list[str], list[str] | None]:
    require(path.is_file(), f"npz file {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception:
        raise BadInputError(f"{path} is not a readable .npz file") from None
    require("images" in archive.files, f"{path} has no 'images' array (found: {', '.join(archive.files) or 'nothing'})")
    try:
        images = archive["images"]
        labels = archive["labels"] if "labels" in archive.files else None
        captions = archive["captions"] if "captions" in archive.files else None
    except ValueError:
        raise BadInputError(f"{path} stores object arrays, which are refused (they need pickle); "
                            "store captions as a string array, np.array(captions, dtype=str)") from None
    require(images.dtype == np.uint8, f"{path}: 'images' must be uint8, got {images.dtype}")
    require(images.ndim in (3, 4) and len(images) > 0, f"{path}: 'images' must be N×H×W or N×H×W×C with N > 0, got shape {images.shape}")
    if labels is not None:
        require(labels.shape == (len(images),) and np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0,
                f"{path}: 'labels' must be {len(images)} non-negative integers")
        labels = labels.astype(np.int64)
    names = [str(int(c)) for c in range(int(labels.max()) + 1)] if labels is not None else []
    if labels is not None and "class_names" in archive.files:
        given = [str(n) for n in archive["class_names"].tolist()]
        require(len(given) > int(labels.max()) and len(set(given)) == len(given),
                f"{path}: 'class_names' must name every label once ({len(given)} names for labels up to {int(labels.max())})")
        names = given
    if captions is not None:
        require(captions.dtype.kind == "U", f"{path}: 'captions' must be strings, got {captions.dtype}")
        require(captions.shape == (len(images),),
                f"{path}: 'captions' holds {captions.size} captions (shape {captions.shape}) for {len(images)} images")
        captions = [str(c) for c in captions.tolist()]
    return list(images), labels, names, captions


def _normalise(images: list[np.ndarray], resolution: int | None, channels: int | None, origin: str) -> np.ndarray:
    """Bring images to one ``N×H×W×C`` uint8 array; resize only when a resolution was asked for."""
    from PIL import Image

    shapes = {img.shape[:2] for img in images}
    if resolution is None:
        require(len(shapes) == 1, f"{origin}: images have different sizes {sorted(shapes)[:3]}; pass --resolution to resize")
        (height, width), = shapes
        require(height == width, f"{origin}: images must be square, got {height}×{width}; pass --resolution to resize")
    out = []
    for img in images:
        img = img if img.ndim == 3 else img[..., None]
        if img.shape[2] == 4:
            img = img[..., :3]
        want = channels or img.shape[2]
        require(want in (1, 3), f"{origin}: channels must be 1 or 3, got {want}")
        if img.shape[2] != want:
            img = img.mean(axis=2, keepdims=True).round().astype(np.uint8) if want == 1 else np.repeat(img, 3, axis=2)
        if resolution is not None and img.shape[:2] != (resolution, resolution):
            mode = "L" if want == 1 else "RGB"
            img = np.asarray(Image.fromarray(img.squeeze(-1) if want == 1 else img, mode).resize((resolution, resolution), Image.BILINEAR))
            img = img if img.ndim == 3 else img[..., None]
        out.append(img)
    channel_counts = {img.shape[2] for img in out}
    require(len(channel_counts) == 1, f"{origin}: images mix grey and colour; pass --channels 1 or 3")
    return np.stack(out)


def read_images(
    path: str | Path,
    *,
    channels: int | None = None,
    resolution: int | None = None,
    exact_size: int | None = None,
    role: str = "images",
    kind: str | None = None,
) -> ImageSet:
    """Read an image folder or a ``.npz`` (by suffix) into an :class:`ImageSet` in ``[-1, 1]``.

    Class sub-folders (or an npz ``labels`` array) give labels and class names; a flat folder gives none.

    Args:
        channels: convert to 1 (grey) or 3 (RGB) channels; ``None`` keeps the files' own.
        resolution: resize every image to ``resolution × resolution``.
        exact_size: refuse (exit 2) images that are not ``exact_size × exact_size`` instead of resizing.
        role: what the images are, for error messages ("forget images", "auxiliary data", ...).
        kind: ``"folder"`` or ``"npz"``; ``None`` decides by the suffix.
    """
    path = Path(path)
    npz = kind == "npz" if kind is not None else path.suffix == ".npz"
    raw, labels, names, captions = (_load_npz if npz else _load_folder)(path)
    if exact_size is not None:
        wrong = [img.shape[:2] for img in raw if img.shape[:2] != (exact_size, exact_size)]
        height, width = wrong[0] if wrong else (exact_size, exact_size)
        require(not wrong,
                f"{role} in {path} are {height}×{width}, the model's {exact_size}×{exact_size}; resize them first")
    pixels = _normalise(raw, resolution, channels, f"{role} {path}")
    return ImageSet(from_uint8(pixels), None if labels is None else torch.from_numpy(labels), names, captions)


def _split(num: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(num)
    num_heldout = int(round(num * heldout_fraction))
    return np.sort(order[num_heldout:]), np.sort(order[:num_heldout])


def load_data(
    spec: str = "digits",
    *,
    resolution: int | None = None,
    channels: int | None = None,
    split_seed: int = 0,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    canary_copies: int | None = None,
) -> DataSplit:
    """Load a data source and split it deterministically into train (members) and held-out (non-members).

    Args:
        spec: ``digits``, ``digits+canary``, ``folder:PATH`` or ``npz:PATH``.
        resolution: resize images to ``resolution×resolution`` (default: keep the source size).
        channels: 1 (grey) or 3 (RGB) (default: keep the source channels).
        split_seed: seed of the train/held-out permutation.
        heldout_fraction: share of images held out as non-members.
        canary_copies: for ``digits+canary``, copies of the canary added to the train split
            (default: 2% of the train split).
    """
    require(0.0 < heldout_fraction < 1.0, f"held-out fraction must be in (0, 1), got {heldout_fraction}")
    require(resolution is None or 4 <= resolution <= 512, f"resolution must be between 4 and 512, got {resolution}")
    require(channels in (None, 1, 3), f"channels must be 1 or 3, got {channels}")
    spec = _canonical_spec(spec)
    kind, _, arg = spec.partition(":")
    if kind in ("digits", "digits+canary"):
        require(not arg, f"data spec {spec!r} takes no argument")
        pixels, labels = _digits_pixels()
        names = [str(i) for i in range(10)]
        origin, captions = "digits", None
    elif kind in ("folder", "npz"):
        require(bool(arg), f"data spec {spec!r} needs a path, e.g. {kind}:PATH")
        raw, labels, names, captions = (_load_folder if kind == "folder" else _load_npz)(Path(arg))
        pixels, origin = None, arg
    else:
        raise BadInputError(f"unknown data source {spec!r}: no such folder or .npz file; use digits, digits+canary, "
                            "a folder of class sub-folders (DIR or folder:DIR) or npz:PATH")
    pixels = _normalise(list(pixels) if pixels is not None else raw, resolution, channels, origin)
    require(len(pixels) >= 4, f"{origin}: need at least 4 images, found {len(pixels)}")
    train_idx, heldout_idx = _split(len(pixels), heldout_fraction, split_seed)
    train_pixels, train_labels = pixels[train_idx], None if labels is None else labels[train_idx]
    description: dict[str, Any] = {"source": spec, "split_seed": split_seed, "heldout_fraction": heldout_fraction}
    if kind == "digits+canary":
        copies = int(round(DEFAULT_CANARY_SHARE * len(train_idx))) if canary_copies is None else canary_copies
        require(copies >= 1, f"canary copies must be at least 1, got {copies}")
        canary = _normalise([canary_image()], resolution, channels, "canary")
        train_pixels = np.concatenate([train_pixels, np.repeat(canary, copies, axis=0)])
        train_labels = np.concatenate([train_labels, np.full(copies, len(names), dtype=np.int64)])
        names = [*names, CANARY_CLASS]
        description["canary_copies"] = copies
    to_labels = (lambda a: torch.from_numpy(a)) if labels is not None else (lambda a: None)
    pick = (lambda index: [captions[i] for i in index]) if captions is not None else (lambda index: None)
    train = ImageSet(from_uint8(train_pixels), to_labels(train_labels), names, pick(train_idx))
    heldout = ImageSet(from_uint8(pixels[heldout_idx]), None if labels is None else to_labels(labels[heldout_idx]), names,
                       pick(heldout_idx))
    description.update(
        resolution=int(pixels.shape[1]), channels=int(pixels.shape[3]), class_names=names,
        num_train=len(train), num_heldout=len(heldout),
        fingerprint=train.fingerprint, heldout_fingerprint=heldout.fingerprint,
        requested_resolution=resolution, requested_channels=channels,
    )
    return DataSplit(train, heldout, description)


def _canonical_spec(spec: str) -> str:
    """``--data`` as users type it: an existing folder is ``folder:DIR``, an existing ``.npz`` file ``npz:FILE``
    (recorded that way, so both spellings describe the same data). A name that is both a built-in data set and
    a folder here is refused as ambiguous."""
    kind = spec.partition(":")[0]
    path = Path(spec)
    if kind in ("digits", "digits+canary"):
        require(not path.is_dir(), f"--data {spec} names both the built-in data set and the folder ./{spec}; "
                f"write folder:{spec} for the folder")
        return spec
    if kind in ("folder", "npz") or not spec:
        return spec
    if path.is_dir():
        return f"folder:{spec}"
    if path.is_file() and path.suffix == ".npz":
        return f"npz:{spec}"
    return spec


def load_recorded_data(description: dict[str, Any]) -> DataSplit:
    """Reload the data a checkpoint was trained on and check it still has the recorded fingerprint."""
    require("source" in description, "the checkpoint records no data source; pass --data")
    split = load_data(
        description["source"],
        resolution=description.get("requested_resolution"),
        channels=description.get("requested_channels"),
        split_seed=description.get("split_seed", 0),
        heldout_fraction=description.get("heldout_fraction", DEFAULT_HELDOUT_FRACTION),
        canary_copies=description.get("canary_copies"),
    )
    recorded = description.get("fingerprint")
    require(recorded is None or recorded == split.description["fingerprint"],
            f"data {description['source']!r} changed since the model was trained "
            f"(fingerprint {split.description['fingerprint']} != recorded {recorded}); pass --data to use it anyway")
    return split


def check_compatible(data: dict[str, Any], unet_config: dict[str, Any], conditional: bool, recorded_classes: int = 0) -> None:
    """Refuse a model/data pairing whose resolution, channels or classes do not match.

    A class-conditional model fits data of K classes with K + 1 class embeddings (the last is the null
    class of classifier-free guidance, as ``unlearnctl train`` builds them) or K (one per class, the usual
    layout of conditional DDPMs: no guidance). ``recorded_classes``: the number of classes of the model's
    own data description (0: unknown); when known, the data must have as many.
    """
    require(data["resolution"] == unet_config["sample_size"],
            f"data resolution {data['resolution']} does not match the model's {unet_config['sample_size']}; pass --resolution {unet_config['sample_size']}")
    require(data["channels"] == unet_config["in_channels"],
            f"data has {data['channels']} channels, the model {unet_config['in_channels']}; pass --channels {unet_config['in_channels']}")
    if conditional:
        classes, embeds = len(data["class_names"]), unet_config["num_class_embeds"]
        require(not recorded_classes or classes == recorded_classes,
                f"data has {classes} classes, the model was trained on {recorded_classes}; give the --data the model was trained on")
        require(embeds in (classes, classes + 1),
                f"data has {classes} classes, the model {embeds} class embeddings (for {embeds - 1} classes and a null "
                f"class, or {embeds} classes without one); give the --data the model was trained on")


# --------------------------------------------------------------------------------------------- forget sets


@dataclass(frozen=True)
class ForgetSpec:
    """What to forget: classes, training-set indices, the canary, images from a file, and/or (text-to-image
    models) concepts by prompt.

    Classes are picked as :func:`class_index` says: by name (``"8"``, ``"canary"``) or ``index:N``. A forget
    prompt names a concept: the training images captioned exactly so, and images the base model draws for it.
    """

    classes: tuple[str, ...] = ()
    indices: tuple[int, ...] = ()
    canary: bool = False
    images: str | None = None
    prompts: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.classes or self.indices or self.canary or self.images or self.prompts)

    def to_dict(self) -> dict[str, Any]:
        spec = {"classes": list(self.classes), "indices": list(self.indices), "canary": self.canary, "images": self.images}
        return {**spec, "prompts": list(self.prompts)} if self.prompts else spec  # pixel records stay as they were

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "ForgetSpec":
        return cls(tuple(spec.get("classes", ())), tuple(spec.get("indices", ())), bool(spec.get("canary")),
                   spec.get("images"), tuple(spec.get("prompts", ())))


@dataclass
class ForgetSet:
    """A resolved forget specification.

    Attributes:
        mode: ``"class"`` (forget whole classes) or ``"data"`` (forget specific images).
        train_mask: bool mask over the train split: True = to forget.
        forget: the images to forget (members from the train split plus any given from a file).
        retain: the rest of the train split.
        class_ids: forgotten class indices (class mode; for the canary, its label).
        spec: the specification it was resolved from.
    """

    mode: str
    train_mask: torch.Tensor
    forget: ImageSet
    retain: ImageSet
    class_ids: list[int]
    spec: ForgetSpec

    @property
    def fingerprint(self) -> str:
        return self.forget.fingerprint

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "spec": self.spec.to_dict(), "class_ids": self.class_ids,
                "num_forget": len(self.forget), "num_retain": len(self.retain), "fingerprint": self.fingerprint}


def class_index(name: str, class_names: Sequence[str]) -> int:
    """The index of the class ``name`` picks (``--forget-class``, ``--class``, ``class:K``), by one rule:

    1. a class name matches itself: ``bar``, ``8``, ``canary``;
    2. ``index:N`` is the N-th class (0-based, in the order ``inspect`` lists them);
    3. a bare number ``N`` that names no class is the N-th class — but only when no class name is a number.
       With numbered classes (folders ``0``, ``17``, ...), a number always means a name, so ``0`` can never
       silently pick class ``17``; a number that names none of them is refused.
    """
    names = list(class_names)
    listing = ", ".join(names) or "none (unlabelled data)"
    if name in names:
        return names.index(name)
    prefix, _, number = name.partition(":")
    if prefix == "index":
        require(number.isdigit() and int(number) < len(names),
                f"class {name!r}: index:N needs 0 <= N < {len(names)}; classes are: {listing}")
        return int(number)
    if name.isdigit():
        numbered = [n for n in names if n.isdigit()]
        if numbered:
            raise BadInputError(f"class {name!r} is not in the data, whose class names are numbers: {listing}; "
                                f"a number means a class name here (index:{name} picks by position)")
        if int(name) < len(names):
            return int(name)
    raise BadInputError(f"class {name!r} is not in the data; classes are: {listing}")


def resolve_forget(spec: ForgetSpec, split: DataSplit, drawn: ImageSet | None = None) -> ForgetSet:
    """Turn a :class:`ForgetSpec` into concrete forget and retain sets of ``split.train``.

    Forget prompts pick the training images captioned exactly so (``split.train`` must carry captions);
    ``drawn`` — images the model draws for those prompts, captioned with them — join the forget set.
    """
    require(not spec.empty, "the forget set is empty; give --forget-class, --forget-index, --forget-canary or --forget-images")
    train = split.train
    mask = torch.zeros(len(train), dtype=torch.bool)
    class_ids = [class_index(str(c), train.class_names) for c in spec.classes]
    if spec.canary:
        require(CANARY_CLASS in train.class_names, "the data has no canary; train on --data digits+canary")
        class_ids.append(train.class_names.index(CANARY_CLASS))
    class_ids = sorted(set(class_ids))
    if class_ids:
        require(train.labels is not None, "forgetting a class needs labelled data")
        mask |= torch.isin(train.labels, torch.tensor(class_ids))
        require(bool(mask.any()), f"no training images have class {', '.join(train.class_names[c] for c in class_ids)}")
    for index in spec.indices:
        require(0 <= index < len(train), f"forget index {index} is outside the training set (0..{len(train) - 1})")
        mask[index] = True
    if spec.prompts:
        require(train.captions is not None, "forget prompts need a text-to-image model and captioned data")
        mask |= torch.tensor([caption in spec.prompts for caption in train.captions], dtype=torch.bool)
    forget = train.subset(mask)
    if spec.images:
        forget = append_forget_images(forget, spec.images, split.description)
    if drawn is not None:
        forget = forget.extend(drawn)
    require(len(forget) > 0, "the forget set is empty")
    require(not bool(mask.all()), "the forget set is the whole training set; nothing would be retained — retrain from scratch instead")
    concepts = spec.classes or spec.prompts  # whole classes or concepts, judged by the classifier
    mode = "class" if concepts and not (spec.indices or spec.images or spec.canary) else "data"
    return ForgetSet(mode, mask, forget, train.subset(~mask), class_ids, spec)


# Images given by --forget-images have no class (label -1); a conditional model sees them under its null class.
NO_CLASS_FOR_FORGET_IMAGES = ("the --forget-images have no class, and this model has no null class to condition them on "
                              "(one class embedding per class); forget training images by --forget-index or --forget-class")


def append_forget_images(forget: ImageSet, path: str, description: dict[str, Any]) -> ImageSet:
    given = read_images(path, channels=description["channels"], exact_size=description["resolution"], role="forget images")
    return forget.extend(ImageSet(given.images, None, forget.class_names, given.captions))  # labels −1: unknown class
