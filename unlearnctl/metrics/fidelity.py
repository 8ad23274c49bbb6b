"""FID, KID and precision/recall through torch-fidelity (DESIGN §5).

The numbers are torch-fidelity's own: :func:`fidelity_metrics` hands generated and real images to
``torch_fidelity.calculate_metrics`` as ``uint8 N×C×H×W`` datasets (torch-fidelity's input contract) and
only renames the keys. Two feature spaces can be chosen (:data:`FEATURE_SPACES`):

* ``domain-classifier`` — the penultimate layer (128-d) of the tool's domain classifier
  (:mod:`unlearnctl.metrics.classifier`), registered into torch-fidelity as the feature extractor
  ``unlearnctl-domain-classifier``. Its ``feature_extractor_weights_path`` is the classifier's
  safetensors file, so ``torch_fidelity.calculate_metrics(feature_extractor="unlearnctl-domain-classifier",
  feature_extractor_weights_path=FILE, ...)`` reproduces our figures on saved PNGs.
* ``inception-v3-compat`` — torch-fidelity's TF-compatible InceptionV3 (pool3, 2048-d), built from a
  local weights file (``--inception-weights``): never downloaded. torch-fidelity unpickles that file
  with ``weights_only=False``; we first load it with ``weights_only=True`` (or as safetensors), re-save
  the plain tensors in memory and hand torch-fidelity those bytes, so no code from the file can run.

torch-fidelity's on-disk cache is always off (it unpickles cache entries).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.helpers import vassert

from unlearnctl.errors import BadInputError, cause_of, require

if TYPE_CHECKING:
    from unlearnctl.metrics.classifier import DomainClassifier

CLASSIFIER_EXTRACTOR = "unlearnctl-domain-classifier"  # name in torch-fidelity's registry
INCEPTION_EXTRACTOR = "inception-v3-compat"
FEATURE_SPACES = ("domain-classifier", "inception-v3-compat")  # --feature-extractor choices

# torch-fidelity result key -> our result key
FIDELITY_KEYS = {
    "frechet_inception_distance": "fid",
    "kernel_inception_distance_mean": "kid",
    "kernel_inception_distance_std": "kid_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}


class DomainClassifierFeatures(FeatureExtractorBase):
    """torch-fidelity feature extractor over the domain classifier (:class:`~.classifier.DomainClassifier`).

    Input: ``uint8`` ``N×C×H×W`` with 1 or 3 channels: RGB for a grey classifier is averaged (torch-fidelity's
    folder loader always yields RGB; equal channels are averaged exactly in integers), grey for an RGB
    classifier is repeated; then the classifier's own input preparation (resize, normalisation) applies.

    Features: ``penultimate`` (the layer before the head, e.g. 128-d for digitnet; FID, KID, precision/recall) and
    ``logits`` (Inception Score).

    Args:
        feature_extractor_weights_path: the classifier's ``.safetensors`` file (required: never trained
            or downloaded here).
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        vassert(feature_extractor_weights_path is not None,
                f"{CLASSIFIER_EXTRACTOR} needs feature_extractor_weights_path = a classifier .safetensors file")
        from unlearnctl.metrics.classifier import load_classifier

        classifier = load_classifier(feature_extractor_weights_path)
        self.net = classifier.net
        self.channels = classifier.channels
        self.prepare = classifier.prepare
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list():
        return ("penultimate", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros((1, 1, 8, 8), dtype=torch.uint8)

    def forward(self, x):
        vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting image as torch.Tensor with dtype=torch.uint8")
        vassert(x.dim() == 4 and x.shape[1] in (self.channels, 1, 3), f"Input is not Bx{self.channels}xHxW: {tuple(x.shape)}")
        x = x.float()  # N×C×H×W in [0, 255]
        if x.shape[1] == 3 and self.channels == 1:
            x = x.mean(dim=1, keepdim=True)  # RGB of a grey image: three equal integers, mean exact
        x = x / 127.5 - 1.0  # the data's range [-1, 1] (same as data.from_uint8)
        features = {"penultimate": self.net.body(self.prepare(x))}  # N×feature_dim
        if "logits" in self.features_list:
            features["logits"] = self.net.head(features["penultimate"])  # N×classes
        return tuple(features[name] for name in self.features_list)


def register_extractors() -> None:
    """Register :class:`DomainClassifierFeatures` with torch-fidelity (idempotent)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(CLASSIFIER_EXTRACTOR, DomainClassifierFeatures)


register_extractors()


class UInt8Images(torch.utils.data.Dataset):
    """A torch-fidelity input: ``uint8`` images ``N×C×H×W``; grey repeated to RGB when ``rgb``."""

    def __init__(self, pixels: torch.Tensor, rgb: bool = False):
        require(pixels.dtype == torch.uint8 and pixels.dim() == 4, "torch-fidelity inputs are uint8 N×C×H×W")
        self.pixels, self.rgb = pixels, rgb

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.pixels[index]
        return image.expand(3, -1, -1).contiguous() if self.rgb and image.shape[0] == 1 else image


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` float images to the ``uint8`` pixels a saved PNG holds (``N×C×H×W``)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@dataclass
class FeatureSpace:
    """A resolved feature extractor: what torch-fidelity is called with, and what the output records."""

    name: str  # our name (FEATURE_SPACES)
    fidelity_name: str  # torch-fidelity registry name
    weights_sha256: str  # sha256 of the weights file
    rgb: bool  # feed 3-channel images
    provenance: dict[str, Any] = field(default_factory=dict)
    _weights_path: str | None = None
    _weights_bytes: bytes | None = None

    def weights_argument(self) -> Any:
        """``feature_extractor_weights_path`` for torch-fidelity (a fresh stream per call for in-memory weights)."""
        return io.BytesIO(self._weights_bytes) if self._weights_bytes is not None else self._weights_path


def classifier_space(classifier: "DomainClassifier") -> FeatureSpace:
    """The domain classifier's penultimate layer; saves an unsaved classifier to a temporary file."""
    from unlearnctl.metrics.classifier import describe, save_classifier

    if classifier.path is None or not Path(classifier.path).is_file():
        folder = tempfile.mkdtemp(prefix="unlearnctl-classifier-")
        atexit.register(lambda: __import__("shutil").rmtree(folder, ignore_errors=True))
        save_classifier(classifier, Path(folder) / "classifier.safetensors")
    return FeatureSpace("domain-classifier", CLASSIFIER_EXTRACTOR, classifier.sha256, rgb=False,
                        provenance={**describe(classifier), "feature_layer": "penultimate",
                                    "feature_dim": classifier.feature_dim},
                        _weights_path=str(classifier.path))


def inception_space(weights: str | Path | None) -> FeatureSpace:
    """torch-fidelity's ``inception-v3-compat`` from a local weights file, loaded without unpickling code."""
    require(weights is not None, "--feature-extractor inception-v3-compat needs --inception-weights PATH "
            "(a local .pth or .safetensors of torch-fidelity's InceptionV3; nothing is downloaded)")
    path = Path(weights)
    require(path.is_file(), f"Inception weights file {path} does not exist")
    raw = path.read_bytes()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load as load_safetensors

            state = load_safetensors(raw)
        else:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInputError(f"{path} cannot be loaded as weights only: {cause_of(exc)}; give a weights-only .pth or a "
                            ".safetensors file (code-carrying pickles are refused)") from None
    require(isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values()),
            f"{path} does not hold a state dict of tensors")
    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in state.items()}, buffer)  # plain tensors we wrote ourselves
    space = FeatureSpace("inception-v3-compat", INCEPTION_EXTRACTOR, hashlib.sha256(raw).hexdigest(), rgb=True,
                         provenance={"kind": "inception-v3-compat", "weights": str(path), "feature_layer": "2048",
                                     "feature_dim": 2048},
                         _weights_bytes=buffer.getvalue())
    _check_inception(space, path)
    return space


def _check_inception(space: FeatureSpace, path: Path) -> None:
    """Build the extractor once now, so wrong weights fail before any sampling."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        FeatureExtractorInceptionV3(INCEPTION_EXTRACTOR, ["2048"], feature_extractor_weights_path=space.weights_argument())
    except Exception as exc:
        raise BadInputError(f"{path} is not torch-fidelity InceptionV3 weights: {cause_of(exc)}") from None


def fidelity_metrics(
    generated: torch.Tensor,
    real: torch.Tensor,
    space: FeatureSpace,
    *,
    fid: bool = True,
    kid: bool = True,
    prc: bool = True,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    prc_neighborhood: int = 3,
    batch_size: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """FID/KID/precision/recall of ``generated`` against ``real`` (``uint8`` ``N×C×H×W`` pixels).

    ``generated`` is torch-fidelity's ``input1`` and ``real`` its ``input2`` (its precision/recall
    convention). KID's subset size is capped at the smaller set. Returns our keys (:data:`FIDELITY_KEYS`).
    """
    import torch_fidelity

    require(fid or kid or prc, "no quality metric requested")
    smallest = min(len(generated), len(real))
    require(smallest >= max(2, prc_neighborhood + 1 if prc else 2),
            f"quality metrics need at least {max(2, prc_neighborhood + 1)} generated and real images, got {smallest}")
    cuda = torch.device(device).type == "cuda"
    kwargs = dict(
        input1=UInt8Images(generated, space.rgb), input2=UInt8Images(real, space.rgb),
        fid=fid, kid=kid, prc=prc, feature_extractor=space.fidelity_name,
        feature_extractor_weights_path=space.weights_argument(),
        kid_subsets=kid_subsets, kid_subset_size=min(kid_subset_size, smallest), prc_neighborhood=prc_neighborhood,
        batch_size=batch_size, rng_seed=seed, cuda=cuda,
        cache=False, datasets_download=False, save_cpu_ram=True, verbose=False,
    )
    with torch.inference_mode(False), torch.no_grad():
        result = torch_fidelity.calculate_metrics(**kwargs)
    return {FIDELITY_KEYS[key]: float(value) for key, value in result.items() if key in FIDELITY_KEYS}
