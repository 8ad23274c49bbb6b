"""SISS: the importance weights, the distances, the loss and the gradient scaling, each checked against a
direct computation; then real steps on the tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from unlearnctl.data import ForgetSpec
from unlearnctl.methods.base import gradient, norm
from unlearnctl.methods.siss import SISS, SISSConfig, mixture_distances, scale_negative, siss_weights
from methods.common import FixedContext, StubUNet, check_basics, fixed_batch, gamma_sigma


def direct_weights(d_x, d_a, lam):
    """The paper's formula with a plain exp, in float64 (fine where exp does not overflow)."""
    d_x, d_a = d_x.double(), d_a.double()
    return 1 / ((1 - lam) + lam * torch.exp(d_x - d_a)), 1 / ((1 - lam) * torch.exp(d_a - d_x) + lam)


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
def test_weights_match_the_direct_formula(lam):
    g = torch.Generator().manual_seed(0)
    d_x, d_a = torch.rand(200, generator=g) * 30, torch.rand(200, generator=g) * 30
    w_x, w_a = siss_weights(d_x, d_a, lam)
    expect_x, expect_a = direct_weights(d_x, d_a, lam)
    torch.testing.assert_close(w_x.double(), expect_x, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w_a.double(), expect_a, rtol=1e-5, atol=1e-7)
    # q_λ = (1−λ) q_x + λ q_a, so (1−λ) w_x + λ w_a = 1 for every sample
    torch.testing.assert_close((1 - lam) * w_x + lam * w_a, torch.ones(200), rtol=1e-5, atol=1e-5)


def test_weights_do_not_overflow_at_small_sigma():
    # at t = 0, σ_t = 0.01: d_x − d_a is of order 10⁴, where exp overflows even in float64
    d_x = torch.tensor([2e4, 0.0, 5e3, 1e4])
    d_a = torch.tensor([0.0, 2e4, 5e3, 1e4 - 1.0])
    assert not torch.isfinite(torch.exp(d_x - d_a)).all()  # the naive form would fail here
    w_x, w_a = siss_weights(d_x, d_a, 0.5)
    assert torch.isfinite(w_x).all() and torch.isfinite(w_a).all()
    torch.testing.assert_close(w_x, torch.tensor([0.0, 2.0, 1.0, 1 / (0.5 + 0.5 * math.e)]))
    torch.testing.assert_close(w_a, torch.tensor([2.0, 0.0, 1.0, 1 / (0.5 / math.e + 0.5)]))


def test_lambda_limits():
    d_x, d_a = torch.tensor([1.0, 3.0, 0.5]), torch.tensor([2.0, 1.0, 0.5])
    # λ → 0: every sample comes from q(·|x): w_x → 1 and w_a → q_a/q_x = exp(d_x − d_a)
    w_x, w_a = siss_weights(d_x, d_a, 1e-7)
    torch.testing.assert_close(w_x, torch.ones(3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w_a, torch.exp(d_x - d_a), rtol=1e-5, atol=1e-5)
    # λ → 1: every sample comes from q(·|a): w_a → 1 and w_x → exp(d_a − d_x)
    w_x, w_a = siss_weights(d_x, d_a, 1 - 1e-7)
    torch.testing.assert_close(w_a, torch.ones(3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w_x, torch.exp(d_a - d_x), rtol=1e-5, atol=1e-5)


def test_conditional_weights_reduce_to_indicators():
    d_x, d_a = torch.tensor([1.0, 4.0, 2.0]), torch.tensor([3.0, 0.5, 2.5])
    lam = 0.3
    # c = c_x ≠ c_a → w_x = 1/(1−λ), w_a = 0;  c = c_a ≠ c_x → w_x = 0, w_a = 1/λ
    w_x, w_a = siss_weights(d_x, d_a, lam, torch.tensor([True, False, True]), torch.tensor([False, True, False]))
    torch.testing.assert_close(w_x, torch.tensor([1 / 0.7, 0.0, 1 / 0.7]))
    torch.testing.assert_close(w_a, torch.tensor([0.0, 1 / 0.3, 0.0]))
    # c = c_x = c_a → the unconditional weights
    same = torch.ones(3, dtype=torch.bool)
    for got, expect in zip(siss_weights(d_x, d_a, lam, same, same), siss_weights(d_x, d_a, lam)):
        torch.testing.assert_close(got, expect)


def test_distances_are_the_gaussian_log_density_ratio():
    b = fixed_batch(5)
    gamma, sigma = gamma_sigma(b["t"])
    m_t = gamma * b["x"] + sigma * b["eps"]
    d_x, d_a = mixture_distances(m_t, b["x"], b["a"], gamma, sigma)
    log_q = lambda center: torch.distributions.Normal(center.double(), sigma.double()).log_prob(m_t.double()).flatten(1).sum(1)
    torch.testing.assert_close((d_a - d_x).double(), log_q(gamma * b["x"]) - log_q(gamma * b["a"]), rtol=1e-4, atol=1e-2)


def test_scaled_negative_term_has_norm_exactly_C():
    g = torch.Generator().manual_seed(3)
    g_x = [torch.randn(4, 3, generator=g), torch.randn(7, generator=g)]
    g_a = [torch.randn(4, 3, generator=g) * 50, torch.randn(7, generator=g) * 50]
    for C in (0.01, 0.5, 3.0):
        combined, factor = scale_negative(g_x, g_a, C)
        negative = [x - c for x, c in zip(g_x, combined)]
        assert float(norm(negative)) == pytest.approx(C, rel=1e-6)
        assert factor == pytest.approx(C / float(norm(g_a)))
    _, factor = scale_negative(g_x, [torch.zeros(4, 3), torch.zeros(7)], 1.0)
    assert factor == 0.0  # no forget sample in the batch: no negative term, no division by zero


def _direct_siss_losses(b, unet, lam, n, k, conditional):
    """SISS's L_x and L_a written out sample by sample from the paper's formulas."""
    gamma, sigma = gamma_sigma(b["t"])
    L_x = L_a = 0.0
    B = len(b["x"])
    for i in range(B):
        x, a, eps, from_a = b["x"][i:i + 1], b["a"][i:i + 1], b["eps"][i:i + 1], bool(b["coins"][i])
        m = gamma[i] * (a if from_a else x) + sigma[i] * eps
        c = None
        if conditional:
            c = (b["c_a"] if from_a else b["c_x"])[i:i + 1]
        pred = unet(m, b["t"][i:i + 1], class_labels=c).sample
        d_x = float(((m - gamma[i] * x) ** 2).sum()) / (2 * float(sigma[i]) ** 2)
        d_a = float(((m - gamma[i] * a) ** 2).sum()) / (2 * float(sigma[i]) ** 2)
        in_x = not conditional or int(c) == int(b["c_x"][i])
        in_a = not conditional or int(c) == int(b["c_a"][i])
        ratio = torch.exp(torch.tensor(d_x - d_a, dtype=torch.float64))  # may be inf: 1/inf = 0 is the right limit
        w_x = 0.0 if not in_x else float(1 / ((1 - lam) + lam * in_a * ratio))
        w_a = 0.0 if not in_a else float(1 / ((1 - lam) * in_x / ratio + lam))
        L_x = L_x + w_x * ((pred - (m - gamma[i] * x) / sigma[i]) ** 2).mean()
        L_a = L_a + w_a * ((pred - (m - gamma[i] * a) / sigma[i]) ** 2).mean()
    return n / (n - k) * L_x / B, k / (n - k) * L_a / B


@pytest.mark.parametrize("conditional", [True, False])
def test_loss_matches_a_direct_computation(conditional):
    b = fixed_batch(8, num_classes=4 if conditional else None)
    if conditional:
        b["c_a"][:3] = b["c_x"][:3]  # some pairs share a label (the usual SISS weights), others do not
    unet = StubUNet(num_embeds=5 if conditional else None)
    ctx = FixedContext(unet, num_classes=4 if conditional else None, n=100, k=10, **{k: b[k] for k in ("x", "c_x", "a", "c_a", "t", "eps", "coins")})
    terms = SISS(SISSConfig(lambda_=0.4), ctx).terms()
    L_x, L_a = terms["L_x"], terms["L_a"]
    expect_x, expect_a = _direct_siss_losses(b, unet, 0.4, 100, 10, conditional)
    torch.testing.assert_close(L_x, expect_x, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(L_a, expect_a, rtol=1e-4, atol=1e-6)


def test_step_gradient_is_g_x_minus_scaled_g_a():
    b = fixed_batch(8)
    unet = StubUNet()
    ctx = FixedContext(unet, **{k: b[k] for k in ("x", "c_x", "a", "c_a", "t", "eps", "coins")})
    method = SISS(SISSConfig(scaling_norm=0.25), ctx)
    method.prepare()
    assert method.C == 0.25
    L_x, L_a = (method.terms()[k] for k in ("L_x", "L_a"))
    params = ctx.parameters()
    g_x, g_a = gradient(L_x, params, retain_graph=True), gradient(L_a, params)
    out = method.step()
    negative = [gx - p.grad for gx, p in zip(g_x, params)]
    assert float(norm(negative)) == pytest.approx(0.25, rel=1e-5)
    for gx, ga, p in zip(g_x, g_a, params):
        torch.testing.assert_close(p.grad, gx - 0.25 / float(norm(g_a)) * ga)
    assert out.grad_norms["g_a"] == pytest.approx(float(norm(g_a)), rel=1e-5)


def test_automatic_C_is_a_share_of_the_naive_deletion_gradient_norm():
    b = fixed_batch(8)
    ctx = FixedContext(StubUNet(), **{k: b[k] for k in ("x", "c_x", "a", "c_a", "t", "eps", "coins")})
    method = SISS(SISSConfig(scaling_share=0.1, calibration_batches=2), ctx)
    prepared = method.prepare()
    L_x = method.terms()["L_x"]  # the fixed context gives the same batch each time
    assert prepared["scaling_norm"] == pytest.approx(0.1 * float(norm(gradient(L_x, ctx.parameters()))), rel=1e-5)
    assert prepared["scaling_norm_automatic"] is True


@pytest.mark.parametrize("bad", [{"lambda_": 0.0}, {"lambda_": 1.0}, {"scaling_norm": -1.0}, {"scaling_share": 0.0}])
def test_config_validation(bad):
    from unlearnctl.errors import BadInputError

    with pytest.raises(BadInputError):
        SISSConfig(**bad)


def test_class_forgetting_on_the_conditional_model(tiny_conditional, shapes_split):
    check_basics(tiny_conditional, shapes_split, "siss", ForgetSpec(classes=("2",)))


def test_data_forgetting_on_the_unconditional_model(tiny_unconditional, shapes_split):
    model, report = check_basics(tiny_unconditional, shapes_split, "siss", ForgetSpec(indices=(0, 1, 2)), {"lambda_": 0.5})
    assert report["prepared"]["scaling_norm"] > 0 and report["forget"]["mode"] == "data"
