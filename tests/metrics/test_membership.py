"""Membership audit: statistics on known score distributions, and the audit on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearnctl.data import ForgetSpec, ImageSet, resolve_forget
from unlearnctl.errors import BadInputError
from unlearnctl.metrics.membership import (
    AuditConfig, attack_figures, audit_sets, clopper_pearson, epsilon_lower_bound, membership_audit, unique_images,
)


def test_attack_figures_on_identical_and_separated_scores():
    rng = np.random.default_rng(0)
    same = attack_figures(rng.normal(size=2000), rng.normal(size=2000))
    assert abs(same["auc"] - 0.5) < 0.03 and same["balanced_accuracy"] < 0.55 and same["tpr_at_fpr"] < 0.05
    apart = attack_figures(rng.normal(5, 1, 500), rng.normal(0, 1, 500))
    assert apart["auc"] > 0.99 and apart["balanced_accuracy"] > 0.97 and apart["tpr_at_fpr"] > 0.9


def test_clopper_pearson_bounds():
    assert clopper_pearson(0, 50, 0.025)[0] == 0.0
    assert clopper_pearson(50, 50, 0.025)[1] == 1.0
    # no successes in n trials: upper bound 1 - alpha^(1/n) (the "rule of three" regime)
    assert clopper_pearson(0, 100, 0.025)[1] == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-6)
    lower, upper = clopper_pearson(30, 100, 0.025)
    assert lower < 0.30 < upper and upper - lower < 0.2


def test_epsilon_bound_is_zero_without_leakage_and_large_with_it():
    rng = np.random.default_rng(1)
    assert epsilon_lower_bound(rng.normal(size=400), rng.normal(size=400))["epsilon"] < 0.3
    leak = epsilon_lower_bound(rng.normal(10, 1, 400), rng.normal(0, 1, 400), confidence=0.95)
    # perfect separation on 200 + 200 test images: log(TPR_lo / FPR_hi) = log(0.025^(1/200) / (1 - 0.025^(1/200)))
    expected = math.log(0.025 ** (1 / 200) / (1 - 0.025 ** (1 / 200)))
    assert leak["epsilon"] == pytest.approx(expected, rel=1e-6) and leak["direction"] == "member-if-above"
    assert epsilon_lower_bound(np.array([1.0]), rng.normal(size=10))["epsilon"] == 0.0  # too few members


def test_unique_images_counts_copies_once():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (0.5, -1.0, 0.5, 0.5, 1.0)])
    unique = unique_images(ImageSet(images, torch.tensor([3, 1, 3, 3, 2]), ["a", "b", "c", "d"]))
    assert len(unique) == 3 and unique.labels.tolist() == [3, 1, 2]


def test_nonmembers_are_heldout_images_of_the_forgotten_class(shapes_split):
    forget = resolve_forget(ForgetSpec(classes=("2",)), shapes_split)
    members, nonmembers, source = audit_sets(forget, shapes_split)
    assert source == "heldout-same-class" and set(nonmembers.labels.tolist()) == {2}
    assert len(members) == len(forget.forget)


def test_audit_config_validation():
    with pytest.raises(BadInputError):
        AuditConfig(repeats=0)
    with pytest.raises(BadInputError):
        AuditConfig(confidence=1.0)


def _fit(checkpoint, images, steps, seed=0):
    from unlearnctl.denoisers import PixelDenoiser
    from unlearnctl.diffusion import NoiseSchedule
    from unlearnctl.training import TrainConfig, fit_denoiser

    torch.manual_seed(seed)
    unet = checkpoint.build_unet()
    config = TrainConfig(steps=steps, batch_size=len(images.images), lr=3e-3, warmup_steps=10, ema_decay=0.0, seed=seed)
    fit_denoiser(PixelDenoiser(unet, NoiseSchedule(checkpoint.scheduler_config)), images, config)
    return unet.eval()


@pytest.mark.slow
def test_audit_detects_images_a_model_was_trained_hard_on(tiny_unconditional, shapes_split):
    """A tiny model fitted to 8 images: those 8 have clearly lower loss than held-out images of their classes."""
    index = tuple(range(0, 192, 24))  # 8 training images across the classes
    forget = resolve_forget(ForgetSpec(indices=index), shapes_split)
    unet = _fit(tiny_unconditional, forget.forget, steps=200)
    config = AuditConfig(repeats=2, timesteps=(50, 100, 200))
    result = membership_audit(unet, tiny_unconditional, forget, shapes_split, config)
    assert result["membership_members"] == 8
    assert result["membership_auc"] > 0.8, result
    assert result["membership_loss_ratio"] < 0.8
    # calibrated by a model that fitted the whole training set instead: those 8 still stand out
    calibrated = membership_audit(unet, tiny_unconditional, forget, shapes_split, config, reference=tiny_unconditional)
    assert calibrated["membership_auc"] > 0.8 and calibrated["membership_loss_ratio"] == result["membership_loss_ratio"]


def test_audit_of_an_untrained_model_is_near_chance(tiny_unconditional, shapes_split):
    """Nobody is a member of a freshly initialised model: members and held-out images score alike."""
    torch.manual_seed(0)
    unet = tiny_unconditional.build_unet()
    for parameter in unet.parameters():
        parameter.data.normal_(0, 0.02)
    forget = resolve_forget(ForgetSpec(classes=("1",)), shapes_split)
    result = membership_audit(unet, tiny_unconditional, forget, shapes_split, AuditConfig(repeats=2, timesteps=(50, 200)))
    assert abs(result["membership_auc"] - 0.5) < 0.2, result
    assert result["membership_loss_ratio"] == pytest.approx(1.0, abs=0.1)
    assert result["membership_epsilon_lb"] < 0.5


def test_reference_must_match_and_must_not_have_seen_the_data(tiny_unconditional, tiny_conditional, shapes_split):
    from dataclasses import replace

    from unlearnctl.metrics.evaluate import _check_reference_data
    from unlearnctl.metrics.membership import check_reference

    check_reference(tiny_unconditional, tiny_conditional)  # same schedule and image shape: usable
    other = replace(tiny_conditional, scheduler_config={**tiny_conditional.scheduler_config, "beta_end": 0.03})
    with pytest.raises(BadInputError, match="different noise schedule"):
        check_reference(tiny_unconditional, other)
    with pytest.raises(BadInputError, match="trained on the full training set"):
        _check_reference_data(tiny_conditional, shapes_split)


def test_rank_auc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    from unlearnctl.metrics.membership import rank_auc

    rng = np.random.default_rng(4)
    m, n = rng.normal(0.3, 1, 57).round(1), rng.normal(0, 1, 91).round(1)  # rounded: ties
    expected = roc_auc_score(np.r_[np.ones(57), np.zeros(91)], np.r_[m, n])
    assert rank_auc(m, n) == pytest.approx(expected, abs=1e-12)


def test_tpr_at_1pct_fpr_needs_100_nonmembers():
    from unlearnctl.metrics.membership import tpr_at_fpr

    rng = np.random.default_rng(5)
    small = tpr_at_fpr(rng.normal(3, 1, 40), rng.normal(0, 1, 99))
    assert small["membership_tpr_at_1pct_fpr"] is None and small["membership_tpr_at_1pct_fpr_count"] is None
    assert "99 non-members" in small["membership_tpr_at_1pct_fpr_unsupported_reason"]
    members = rng.normal(3, 1, 40)
    enough = tpr_at_fpr(members, rng.normal(0, 1, 100))
    assert enough["membership_tpr_at_1pct_fpr_unsupported_reason"] is None
    assert enough["membership_tpr_at_1pct_fpr_n"] == 40
    assert enough["membership_tpr_at_1pct_fpr"] == enough["membership_tpr_at_1pct_fpr_count"] / 40
    assert enough["membership_tpr_at_1pct_fpr_ci95_low"] <= enough["membership_tpr_at_1pct_fpr"] <= enough["membership_tpr_at_1pct_fpr_ci95_high"]


def test_epsilon_bound_reports_its_ceiling():
    from unlearnctl.metrics.membership import epsilon_ceiling

    rng = np.random.default_rng(1)
    leak = epsilon_lower_bound(rng.normal(10, 1, 400), rng.normal(0, 1, 400), confidence=0.95)
    expected = math.log(0.025 ** (1 / 200) / (1 - 0.025 ** (1 / 200)))  # perfect separation of 200 + 200
    assert leak["ceiling"] == pytest.approx(expected, rel=1e-6) and leak["capped"]
    assert not epsilon_lower_bound(rng.normal(0.5, 1, 400), rng.normal(0, 1, 400))["capped"]
    assert epsilon_ceiling(1, 10) == 0.0  # one test member: no bound above 0 is possible
    assert epsilon_ceiling(100, 100) == pytest.approx(3.29, abs=0.01)


def test_fast_balanced_accuracy_equals_the_roc_curve_figure():
    """The bootstrap's one-sort balanced accuracy against sklearn's ROC curve, ties included."""
    import numpy as np

    from unlearnctl.metrics.membership import attack_figures, balanced_accuracy

    rng = np.random.default_rng(3)
    for m, n, levels in [(40, 30, 1000), (25, 60, 5), (1, 7, 3), (50, 50, 2)]:
        members = rng.integers(0, levels, m) + rng.normal(0.3, 1, m).round(1) * (levels > 5)
        nonmembers = rng.integers(0, levels, n).astype(float)
        assert balanced_accuracy(members, nonmembers) == pytest.approx(
            attack_figures(members, nonmembers)["balanced_accuracy"], abs=1e-12)
