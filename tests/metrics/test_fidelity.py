"""torch-fidelity glue: our FID is torch-fidelity's FID; the feature space separates real from noise."""

from __future__ import annotations

import io

import pytest
import torch

from unlearnctl.errors import BadInputError
from unlearnctl.metrics.fidelity import (
    CLASSIFIER_EXTRACTOR, DomainClassifierFeatures, classifier_space, fidelity_metrics, inception_space, to_pixels,
)


def test_fid_equals_torch_fidelity_on_saved_images(tiny_conditional, tmp_path):
    """Our path (in-memory uint8 tensors) vs a direct calculate_metrics call on the saved PNG folders."""
    import torch_fidelity

    from unlearnctl.metrics.evaluate import EvalConfig, run_evaluation

    config = EvalConfig(num_samples=120, steps=10, metrics=("quality",), sample_batch_size=200)
    evaluation = run_evaluation(tiny_conditional, config=config)
    folder = evaluation.save_samples(tmp_path / "samples")
    extractor = evaluation.result["provenance"]["extractor"]
    assert extractor["fidelity_name"] == CLASSIFIER_EXTRACTOR
    direct = torch_fidelity.calculate_metrics(
        input1=str(folder / "retain"), input2=str(folder / "real"), fid=True, prc=True,
        feature_extractor=extractor["fidelity_name"], feature_extractor_weights_path=extractor["path"],
        cuda=False, cache=False, verbose=False, save_cpu_ram=True,
    )
    assert abs(evaluation.result["fid"] - direct["frechet_inception_distance"]) < 1e-3
    assert evaluation.result["precision"] == pytest.approx(direct["precision"], abs=1e-6)
    assert evaluation.result["recall"] == pytest.approx(direct["recall"], abs=1e-6)
    assert evaluation.result["num_retain_samples"] == len(list((folder / "retain").glob("*.png"))) == 120


def test_fid_between_real_halves_is_far_below_fid_to_noise(shapes_split, shapes_classifier):
    space = classifier_space(shapes_classifier)
    real = to_pixels(shapes_split.train.images)
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    half_a, half_b = real[order[: len(real) // 2]], real[order[len(real) // 2:]]
    noise = torch.randint(0, 256, half_a.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    halves = fidelity_metrics(half_a, half_b, space, kid=False)["fid"]
    to_noise = fidelity_metrics(noise, half_b, space, kid=False)["fid"]
    assert halves * 10 < to_noise, (halves, to_noise)


def test_extractor_reads_grey_and_its_rgb_copy_alike(shapes_split, shapes_classifier):
    extractor = DomainClassifierFeatures(CLASSIFIER_EXTRACTOR, ["penultimate", "logits"],
                                         feature_extractor_weights_path=str(shapes_classifier.path))
    pixels = to_pixels(shapes_split.heldout.images[:16])
    grey = extractor(pixels)
    rgb = extractor(pixels.expand(-1, 3, -1, -1).contiguous())
    assert torch.equal(grey[0], rgb[0]) and grey[1].shape == (16, 4)
    # the features are the classifier's own penultimate layer
    assert torch.allclose(grey[0], shapes_classifier.features(shapes_split.heldout.images[:16]), atol=1e-5)


def test_extractor_refuses_float_input(shapes_classifier):
    extractor = DomainClassifierFeatures(CLASSIFIER_EXTRACTOR, ["penultimate"], feature_extractor_weights_path=str(shapes_classifier.path))
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.zeros(2, 1, 8, 8))


def test_inception_needs_local_weights(tmp_path):
    with pytest.raises(BadInputError, match="--inception-weights"):
        inception_space(None)
    with pytest.raises(BadInputError, match="does not exist"):
        inception_space(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(BadInputError, match="weights-only"):
        inception_space(junk)


def test_inception_refuses_code_carrying_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(BadInputError, match="weights-only"):
        inception_space(path)


def test_inception_refuses_weights_of_another_network(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3, 3)}, path)
    with pytest.raises(BadInputError, match="not torch-fidelity InceptionV3 weights"):
        inception_space(path)


@pytest.mark.slow
def test_inception_from_local_weights_file(tmp_path, monkeypatch):
    """Randomly initialised InceptionV3 weights saved locally: loaded, hashed, used — nothing downloaded."""
    import hashlib

    import torch_fidelity.feature_extractor_inceptionv3 as inception

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    class Blank(inception.FeatureExtractorInceptionV3):  # builds the architecture without loading weights
        def load_state_dict(self, *args, **kwargs):
            return None

    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: {})
    weights = tmp_path / "inception.pth"
    torch.save(Blank("blank", ["2048"]).state_dict(), weights)
    monkeypatch.setattr(inception, "load_state_dict_from_url", no_download)
    space = inception_space(weights)
    assert space.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest() and space.rgb
    assert isinstance(space.weights_argument(), io.BytesIO)
    pixels = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    result = fidelity_metrics(pixels[:3], pixels[3:], space, kid=False, prc=False, batch_size=3)
    assert set(result) == {"fid"} and result["fid"] == result["fid"]  # finite, not NaN


def test_bootstrap_fid_statistic_is_torch_fidelity_fid_and_intervals_contain_the_figures():
    import numpy as np
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    from unlearnctl.metrics.fidelity import FrechetToReal, fid_kid_intervals

    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16))
    generated = rng.normal(0.3, 1.2, size=(200, 16))
    stats = [fid_features_to_statistics(torch.from_numpy(f)) for f in (generated, real)]
    fid = fid_statistics_to_metric(stats[0], stats[1], False)["frechet_inception_distance"]
    assert FrechetToReal(real)(generated) == pytest.approx(fid, rel=1e-9)
    kid = kid_features_to_metric(torch.from_numpy(generated), torch.from_numpy(real), kid_subsets=20,
                                 kid_subset_size=200, rng_seed=0, verbose=False)["kernel_inception_distance_mean"]
    out = fid_kid_intervals(generated, real, fid, kid, rounds=100, seed=0)
    assert out["fid_ci95_low"] <= fid <= out["fid_ci95_high"] and out["kid_ci95_low"] <= kid <= out["kid_ci95_high"]
    assert out["fid_ci95_high"] - out["fid_ci95_low"] > 0
    # fewer generated rows, wider interval
    few = fid_kid_intervals(generated[:50], real, FrechetToReal(real)(generated[:50]), None, rounds=100, seed=0)
    assert few["fid_ci95_high"] - few["fid_ci95_low"] > out["fid_ci95_high"] - out["fid_ci95_low"]
