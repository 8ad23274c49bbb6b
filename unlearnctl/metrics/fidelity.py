"""FID, KID and precision/recall through torch-fidelity (docs/metrics.md).

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

import numpy as np
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


def extract_features(pixels: torch.Tensor, space: FeatureSpace, metrics: tuple[str, ...] = ("fid", "kid", "prc"), *,
                     batch_size: int = 1000, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """torch-fidelity's features of ``uint8`` ``N×C×H×W`` pixels: ``{layer: N×D}`` for the layers ``metrics`` use.

    The same calls as ``torch_fidelity.calculate_metrics`` makes (``create_feature_extractor``,
    ``get_featuresdict_from_dataset``), done once so the bootstrap can reuse the features.
    """
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset, resolve_feature_layer_for_metric

    cuda = torch.device(device).type == "cuda"
    layers = sorted({resolve_feature_layer_for_metric(m, feature_extractor=space.fidelity_name) for m in metrics})
    extractor = create_feature_extractor(space.fidelity_name, layers, cuda=cuda,
                                         feature_extractor_weights_path=space.weights_argument(), verbose=False)
    with torch.inference_mode(False), torch.no_grad():
        return get_featuresdict_from_dataset(UInt8Images(pixels, space.rgb), extractor, batch_size, cuda,
                                             save_cpu_ram=True, verbose=False)


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
    bootstrap_rounds: int = 0,
) -> dict[str, float]:
    """FID/KID/precision/recall of ``generated`` against ``real`` (``uint8`` ``N×C×H×W`` pixels).

    ``generated`` is torch-fidelity's ``input1`` and ``real`` its ``input2`` (its precision/recall
    convention). Features are extracted once (:func:`extract_features`) and handed to torch-fidelity's own
    metric functions, so the figures are those of ``torch_fidelity.calculate_metrics``. KID's subset size
    is capped at the smaller set. Returns our keys (:data:`FIDELITY_KEYS`) and, with ``bootstrap_rounds``,
    ``fid_ci95_low/high``, ``kid_ci95_low/high`` (:func:`fid_kid_intervals`) and ``fid_n``/``kid_n``.
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric
    from torch_fidelity.utils import resolve_feature_layer_for_metric

    require(fid or kid or prc, "no quality metric requested")
    smallest = min(len(generated), len(real))
    require(smallest >= max(2, prc_neighborhood + 1 if prc else 2),
            f"quality metrics need at least {max(2, prc_neighborhood + 1)} generated and real images, got {smallest}")
    metrics = tuple(m for m, on in (("fid", fid), ("kid", kid), ("prc", prc)) if on)
    features_g = extract_features(generated, space, metrics, batch_size=batch_size, device=device)
    features_r = extract_features(real, space, metrics, batch_size=batch_size, device=device)
    layer = {m: resolve_feature_layer_for_metric(m, feature_extractor=space.fidelity_name) for m in metrics}
    result: dict[str, float] = {}
    if fid:
        stats = [fid_features_to_statistics(f[layer["fid"]]) for f in (features_g, features_r)]
        result.update(fid_statistics_to_metric(stats[0], stats[1], False))
    if kid:
        result.update(kid_features_to_metric(features_g[layer["kid"]], features_r[layer["kid"]], kid_subsets=kid_subsets,
                                              kid_subset_size=min(kid_subset_size, smallest), rng_seed=seed, verbose=False))
    if prc:
        result.update(prc_features_to_metric(features_g[layer["prc"]], features_r[layer["prc"]],
                                             prc_neighborhood=prc_neighborhood, save_cpu_ram=True, verbose=False))
    out = {FIDELITY_KEYS[key]: float(value) for key, value in result.items() if key in FIDELITY_KEYS}
    if bootstrap_rounds:
        out.update(fid_kid_intervals(features_g[layer["fid" if fid else "kid"]].double().numpy() if (fid or kid) else None,
                                     features_r[layer["fid" if fid else "kid"]].double().numpy() if (fid or kid) else None,
                                     out.get("fid"), out.get("kid"), rounds=bootstrap_rounds, seed=seed))
    return out


class FrechetToReal:
    """FID of feature rows against fixed real features, ``Σ_r^½`` computed once (the bootstrap's statistic).

    ``‖μ_g − μ_r‖² + tr Σ_g + tr Σ_r − 2 Σ_i sqrt(λ_i(Σ_r^½ Σ_g Σ_r^½))``: ``Σ_r^½ Σ_g Σ_r^½`` is symmetric
    and similar to ``Σ_g Σ_r``, so the trace of its square root is torch-fidelity's ``tr((Σ_g Σ_r)^½)``.
    """

    def __init__(self, real: np.ndarray):
        self.mu_r, sigma_r = real.mean(0), np.cov(real, rowvar=False)
        eigenvalues, vectors = np.linalg.eigh(sigma_r)
        self.root_r = (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T  # Σ_r^½, D×D
        self.trace_r = float(np.trace(sigma_r))

    def __call__(self, generated: np.ndarray) -> float:
        mu_g, sigma_g = generated.mean(0), np.cov(generated, rowvar=False)
        middle = np.linalg.eigvalsh(self.root_r @ sigma_g @ self.root_r)
        diff = mu_g - self.mu_r
        return float(diff @ diff + np.trace(sigma_g) + self.trace_r - 2 * np.sqrt(np.clip(middle, 0, None)).sum())


KID_BOOTSTRAP_ROWS = 2000  # the KID bootstrap's kernel matrix holds at most this many generated rows


def fid_kid_intervals(generated: np.ndarray | None, real: np.ndarray | None, fid: float | None, kid: float | None, *,
                      rounds: int, seed: int = 0) -> dict[str, Any]:
    """Bootstrap intervals of FID and KID over the generated feature rows (the real rows stay fixed).

    * FID: each round resamples the ``n`` generated rows with replacement and recomputes
      ``‖μ_g − μ_r‖² + tr Σ_g + tr Σ_r − 2 tr((Σ_r^½ Σ_g Σ_r^½)^½)`` (the same value as torch-fidelity's
      ``tr((Σ_g Σ_r)^½)`` form, with one symmetric eigen-decomposition per round).
    * KID: each round recomputes the unbiased MMD² (polynomial kernel ``(xᵀy/d + 1)³``, torch-fidelity's)
      of the resampled rows against all real rows from the kernel matrix of at most
      :data:`KID_BOOTSTRAP_ROWS` generated rows (a seeded subset beyond; the interval is then conservative).
      The real-real term is constant and cancels in the centred interval.

    Both intervals are :func:`~.intervals.centred_interval` (bootstrap quantiles moved onto the estimate).
    """
    from unlearnctl.metrics.intervals import bootstrap, bootstrap_indices, centred_interval

    out: dict[str, Any] = {}
    if generated is None:
        return out
    if fid is not None:
        frechet = FrechetToReal(real)
        low, high = centred_interval(fid, bootstrap(frechet, (generated,), rounds, seed))
        out.update(fid_ci95_low=max(0.0, low), fid_ci95_high=high)
    if kid is not None:
        rows = generated
        if len(rows) > KID_BOOTSTRAP_ROWS:
            rows = rows[np.sort(np.random.default_rng(seed).permutation(len(rows))[:KID_BOOTSTRAP_ROWS])]
        d = rows.shape[1]
        k_gg = (rows @ rows.T / d + 1) ** 3  # n×n
        k_gr = np.concatenate([((rows[i:i + 500] @ real.T / d + 1) ** 3).mean(1) for i in range(0, len(rows), 500)])  # n
        diagonal, n = np.diag(k_gg), len(rows)
        values = []
        for (index,) in bootstrap_indices([n], rounds, seed):
            w = np.bincount(index, minlength=n).astype(float)  # how often each row was drawn
            within = (w @ k_gg @ w - w @ diagonal) / (n * (n - 1))
            values.append(within - 2 * (w @ k_gr) / n)
        low, high = centred_interval(kid, np.array(values))
        out.update(kid_ci95_low=low, kid_ci95_high=high)
    return out
