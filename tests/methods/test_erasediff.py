"""EraseDiff: the λ rule, the forget objective for both targets, and the combined gradient."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unlearnctl.data import ForgetSpec
from unlearnctl.errors import BadInputError
from unlearnctl.methods.base import dot, gradient, norm
from unlearnctl.methods.erasediff import EraseDiff, EraseDiffConfig, erasediff_lambda
from methods.common import FixedContext, StubUNet, check_basics, fixed_batch, gamma_sigma, mse


def test_lambda_rule_on_fixed_vectors():
    e = lambda *v: [torch.tensor(v, dtype=torch.float32)]
    assert erasediff_lambda(e(1.0, 0.0), e(0.0, 2.0), 0.1) == pytest.approx(0.1)  # orthogonal: λ = η
    assert erasediff_lambda(e(-1.0, 0.0), e(1.0, 0.0), 0.1) == pytest.approx(1.1)  # opposed: λ = η + 1
    assert erasediff_lambda(e(1.0, 0.0), e(1.0, 0.0), 0.1) == 0.0  # aligned enough: λ clipped at 0
    assert erasediff_lambda(e(1.0, 0.0), e(0.0, 0.0), 0.1) == 0.0  # ∇q = 0: nothing to enforce


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=6, max_size=6), st.lists(st.floats(-5, 5), min_size=6, max_size=6),
       st.floats(0, 2))
def test_update_descends_q_by_at_least_eta(grad_F, grad_q, eta):
    grad_F, grad_q = [torch.tensor(grad_F, dtype=torch.float64)], [torch.tensor(grad_q, dtype=torch.float64)]
    q_sq = float(norm(grad_q)) ** 2
    lam = erasediff_lambda(grad_F, grad_q, eta)
    assert lam >= 0
    direction = [f + lam * q for f, q in zip(grad_F, grad_q)]
    # ⟨∇F + λ∇q, ∇q⟩ ≥ η ||∇q||², with equality whenever λ > 0
    assert float(dot(direction, grad_q)) >= eta * q_sq - 1e-6 * max(1.0, q_sq)
    if lam > 0:
        assert float(dot(direction, grad_q)) == pytest.approx(eta * q_sq, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("target", ["uniform", "pseudo-label"])
def test_forget_objective_matches_a_direct_computation(target):
    b = fixed_batch(6)
    unet = StubUNet()
    ctx = FixedContext(unet, **b)
    q = EraseDiff(EraseDiffConfig(forget_target=target), ctx).forget_objective()
    gamma, sigma = gamma_sigma(b["t"])
    m_t = gamma * b["a"] + sigma * b["eps"]
    pred = unet(m_t, b["t"], class_labels=b["c_a"]).sample
    eps_f = b["uniform"] if target == "uniform" else unet(m_t, b["t"], class_labels=b["other"]).sample.detach()
    torch.testing.assert_close(q, mse(pred, eps_f).mean(), rtol=1e-5, atol=1e-6)


def test_pseudo_label_target_is_not_differentiated():
    b = fixed_batch(6)
    ctx = FixedContext(StubUNet(), **b)
    method = EraseDiff(EraseDiffConfig(forget_target="pseudo-label"), ctx)
    grads = gradient(method.forget_objective(), ctx.parameters())
    embed = dict(zip([n for n, _ in ctx.unet.named_parameters()], grads))["embed.weight"]
    # only the forget labels' embeddings receive a gradient, not the random other classes' (stop-grad target)
    touched = {int(i) for i in torch.nonzero(embed.abs().sum(1)).flatten()}
    assert touched == {int(c) for c in b["c_a"]}


def test_step_combines_the_two_gradients_with_the_lambda_rule():
    b = fixed_batch(6)
    ctx = FixedContext(StubUNet(), **b)
    method = EraseDiff(EraseDiffConfig(eta=0.3), ctx)
    params = ctx.parameters()
    grad_F, grad_q = gradient(method.retain_loss(), params), gradient(method.forget_objective(), params)
    lam = erasediff_lambda(grad_F, grad_q, 0.3)
    out = method.step()
    assert out.terms["lambda"] == pytest.approx(lam)
    for f, q, p in zip(grad_F, grad_q, params):
        torch.testing.assert_close(p.grad, f + lam * q)


def test_pseudo_label_needs_a_conditional_model(tiny_unconditional, shapes_split):
    from methods.common import run

    with pytest.raises(BadInputError, match="pseudo-label"):
        run(tiny_unconditional, shapes_split, "erasediff", ForgetSpec(indices=(0,)), params={"forget_target": "pseudo-label"})


def test_config_validation():
    with pytest.raises(BadInputError, match="forget target"):
        EraseDiffConfig(forget_target="zeros")
    with pytest.raises(BadInputError):
        EraseDiffConfig(eta=-1)


def test_runs_on_the_tiny_models(tiny_conditional, tiny_unconditional, shapes_split):
    check_basics(tiny_conditional, shapes_split, "erasediff", ForgetSpec(classes=("2",)), {"forget_target": "pseudo-label"})
    check_basics(tiny_unconditional, shapes_split, "erasediff", ForgetSpec(indices=(0, 1)))
