"""SalUn: the saliency mask, the random-label loss, and that only salient weights change."""

from __future__ import annotations

import pytest
import torch

from unlearnctl.data import ForgetSpec
from unlearnctl.errors import BadInputError
from unlearnctl.methods.salun import SalUn, SalUnConfig, saliency_mask
from methods.common import FixedContext, StubUNet, check_basics, fixed_batch, gamma_sigma, make_state, mse, run


def test_mask_keeps_the_top_percent_by_magnitude_over_all_tensors():
    grads = [torch.tensor([1.0, -5.0, 3.0]), torch.tensor([[-4.0, 2.0]])]
    masks = saliency_mask(grads, 40.0)  # 40% of 5 weights = 2: |−5| and |−4|
    assert [m.tolist() for m in masks] == [[False, True, False], [[True, False]]]
    assert all(m.all() for m in saliency_mask(grads, 100.0))
    assert sum(int(m.sum()) for m in saliency_mask(grads, 1.0)) == 1  # at least one weight


@pytest.mark.parametrize("relabel", ["class", "image", "resample"])
@pytest.mark.parametrize("conditional", [True, False])
def test_random_label_loss_matches_a_direct_computation(conditional, relabel):
    b = fixed_batch(6, num_classes=4 if conditional else None)
    unet = StubUNet(num_embeds=5 if conditional else None)
    ctx = FixedContext(unet, num_classes=4 if conditional else None, **b)
    ctx.retain.images = torch.rand(len(ctx.retain), 1, 8, 8) * 2 - 1
    method = SalUn(SalUnConfig(relabel=relabel), ctx)
    own_retain = torch.randperm(len(ctx.retain))[:len(ctx.forget)]  # fixed mode: each forget image's retain image
    method.pseudo = torch.cat([b["other"], b["other"][:4]]) if conditional else own_retain  # one entry per forget image
    loss = method.random_label_loss()
    gamma, sigma = gamma_sigma(b["t"])
    m_t = gamma * b["a"] + sigma * b["eps"]
    pred = unet(m_t, b["t"], class_labels=b["c_a"]).sample
    index = ctx.fixed["index"]
    if conditional:  # the prediction under another class (fixed per image, or drawn now), not differentiated
        other = method.pseudo[index] if relabel != "resample" else b["other"]
        target = unet(m_t, b["t"], class_labels=other).sample.detach()
    else:  # unconditional adaptation: the forget sample relabelled as a retain image
        x_r = ctx.retain.images[own_retain[index]] if relabel != "resample" else b["x"]
        target = (m_t - gamma * x_r) / sigma
    torch.testing.assert_close(loss, mse(pred, target).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("relabel", ["class", "image"])
def test_fixed_relabelling_draws_another_class(relabel):
    method = make_state("salun", saliency_batches=1, relabel=relabel).method
    labels, pseudo = method.ctx.forget.labels, method.pseudo
    assert pseudo.shape == labels.shape
    assert bool((pseudo != labels).all()) and bool(((pseudo >= 0) & (pseudo < 4)).all())
    if relabel == "class":  # every image of a class gets the class's one pseudo label
        for c in labels.unique():
            assert len(pseudo[labels == c].unique()) == 1


def test_only_salient_weights_change(tiny_conditional, shapes_split):
    model, report = run(tiny_conditional, shapes_split, "salun", ForgetSpec(classes=("2",)), steps=3,
                        params={"saliency_percent": 10.0, "saliency_batches": 2})
    share = report["prepared"]["salient_share"]
    assert 0.09 <= share <= 0.11
    moved = sum(int((model.state_dict[k] != v).sum()) for k, v in tiny_conditional.state_dict.items() if v.is_floating_point())
    total = sum(v.numel() for v in tiny_conditional.state_dict.values() if v.is_floating_point())
    assert 0 < moved <= report["prepared"]["salient_weights"] and moved / total <= 0.11


def test_config_validation():
    for bad in ({"saliency_percent": 0.0}, {"saliency_percent": 120.0}, {"alpha": -1.0}, {"saliency_batches": 0}):
        with pytest.raises(BadInputError):
            SalUnConfig(**bad)


def test_runs_on_the_tiny_models(tiny_conditional, tiny_unconditional, shapes_split):
    check_basics(tiny_conditional, shapes_split, "salun", ForgetSpec(classes=("2",)), {"saliency_batches": 2})
    check_basics(tiny_unconditional, shapes_split, "salun", ForgetSpec(indices=(0, 1)), {"saliency_batches": 2})
