"""Every fine-tuning method moves the tiny conditional model the right way: class "2" (box) is generated
less, the retained classes are still generated (shapes are classified by the nearest class mean)."""

from __future__ import annotations

import pytest
import torch

from conftest import nearest_centroid_labels
from unlearnctl.data import ForgetSpec
from unlearnctl.diffusion import balanced_labels, sample_images
from methods.common import run

FORGET, RETAINED = 2, [0, 1, 3]
PARAMS = {"dimum": {"num_generated": 16}, "salun": {"saliency_batches": 2}}


def rates(checkpoint, split) -> tuple[float, float]:
    """(share of class-2 samples classified as 2, share of retained-class samples classified as their class)."""
    unet = checkpoint.build_unet("cpu").eval()
    forget = sample_images(unet, checkpoint.scheduler_config, labels=torch.full((16,), FORGET), null_class=4, steps=10, seed=1)
    labels = balanced_labels(RETAINED, 6)
    retain = sample_images(unet, checkpoint.scheduler_config, labels=labels, null_class=4, steps=10, seed=2)
    return (float((nearest_centroid_labels(forget, split) == FORGET).float().mean()),
            float((nearest_centroid_labels(retain, split) == labels).float().mean()))


@pytest.fixture(scope="module")
def base_rates(tiny_conditional, shapes_split):
    forget_rate, retain_acc = rates(tiny_conditional, shapes_split)
    assert forget_rate >= 0.9 and retain_acc >= 0.9  # the base generates every class
    return forget_rate, retain_acc


@pytest.mark.parametrize("method", ["siss", "siss-no-is", "erasediff", "dimum", "salun", "neggrad"])
def test_forget_rate_drops(method, tiny_conditional, shapes_split, base_rates):
    model, report = run(tiny_conditional, shapes_split, method, ForgetSpec(classes=("2",)), steps=40, lr=1e-3,
                        batch_size=32, params=PARAMS.get(method))
    forget_rate, retain_acc = rates(model, shapes_split)
    assert forget_rate <= 0.5, (forget_rate, base_rates)
    if method != "neggrad":  # gradient ascent alone wrecks the retained classes too; that is its known failure
        assert retain_acc >= 0.6, (retain_acc, base_rates)


def test_naive_deletion_barely_forgets_in_the_same_budget(tiny_conditional, shapes_split, base_rates):
    model, _ = run(tiny_conditional, shapes_split, "naive", ForgetSpec(classes=("2",)), steps=40, lr=1e-3, batch_size=32)
    forget_rate, retain_acc = rates(model, shapes_split)
    assert forget_rate >= 0.75 and retain_acc >= 0.6  # the forgetting above comes from the methods' forget terms
