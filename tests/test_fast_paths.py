"""Fast paths of issue 8: SISS's opt-in refresh interval, mixed precision, fp16 loss scaling.

(Timings live in bench/, never here.)
"""

from __future__ import annotations

import pytest
import torch

from unlearnctl import distributed
from unlearnctl.errors import BadInputError
from unlearnctl.methods.base import gradient, norm
from unlearnctl.methods.siss import SISS, SISSConfig
from methods.common import FixedContext, StubUNet, fixed_batch


def _siss(refresh_every: int) -> tuple[SISS, FixedContext]:
    b = fixed_batch(8)
    ctx = FixedContext(StubUNet(), **{k: b[k] for k in ("x", "c_x", "a", "c_a", "t", "eps", "coins")})
    method = SISS(SISSConfig(scaling_norm=0.25, refresh_every=refresh_every), ctx)
    method.prepare()
    return method, ctx


def test_fast_step_estimates_the_factor_from_the_output_head():
    """Between exact steps: ‖g_a‖ ≈ (‖g_a‖/‖g_a(head)‖ of the last exact step) × ‖g_a(head)‖ now, and one
    backward of L_x − (C/‖g_a‖_est)·L_a gives g_x − (C/‖g_a‖_est)·g_a."""
    method, ctx = _siss(refresh_every=3)
    params = ctx.parameters()
    exact = method.step()  # step 1 measures ‖g_a‖ and the head ratio
    g_exact = [p.grad.clone() for p in params]
    assert {"g_x", "g_a", "g"} <= exact.grad_norms.keys()
    assert method.factor == pytest.approx(0.25 / exact.grad_norms["g_a"], rel=1e-5)

    fast = method.step()  # step 2: same weights and draws (fixed context), so the estimate is exact
    assert fast.grad_norms.keys() == {"g_a_est", "g"}
    assert fast.grad_norms["g_a_est"] == pytest.approx(exact.grad_norms["g_a"], rel=1e-5)
    for p, g in zip(params, g_exact):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)

    with torch.no_grad():  # move the weights: the estimate follows ‖g_a(head)‖, scaled by the old ratio
        for p in params:
            p.mul_(1.5)
    L_x, L_a = (method.terms()[k] for k in ("L_x", "L_a"))
    head = [p for name, p in ctx.unet.named_parameters()][-2:]  # StubUNet: no conv_out, the last two tensors
    g_x, g_a = gradient(L_x, params, retain_graph=True), gradient(L_a, params, retain_graph=True)
    expected = method.head_ratio * float(norm(gradient(L_a, head)))
    third = method.step()
    assert third.grad_norms["g_a_est"] == pytest.approx(expected, rel=1e-5)
    for p, gx, ga in zip(params, g_x, g_a):
        torch.testing.assert_close(p.grad, gx - 0.25 / expected * ga, rtol=1e-5, atol=1e-7)
    fourth = method.step()  # step 4: exact again
    assert "g_a" in fourth.grad_norms


def test_default_is_exact_every_step():
    method, _ = _siss(refresh_every=1)
    for _ in range(3):
        assert "g_a" in method.step().grad_norms


def test_refresh_state_survives_a_resume():
    method, _ = _siss(refresh_every=4)
    method.step()
    method.step()
    state = method.state_dict()
    other, _ = _siss(refresh_every=4)
    other.load_state_dict(state)
    assert (other.steps_taken, other.factor, other.head_ratio, other.C) == (2, method.factor, method.head_ratio, 0.25)
    assert "g_a_est" in other.step().grad_norms  # step 3 of 4: estimated


def test_refresh_interval_is_validated():
    with pytest.raises(BadInputError, match="refresh interval must be at least 1"):
        SISSConfig(refresh_every=0)


def test_precision_is_validated():
    with pytest.raises(BadInputError, match="fp16 needs a CUDA GPU"):
        distributed.check_precision("fp16", torch.device("cpu"))
    with pytest.raises(BadInputError, match="unknown precision 'fp64'"):
        distributed.check_precision("fp64", "cpu")
    assert distributed.check_precision("bf16", "cpu") == "bf16"


def test_bf16_autocast_runs_the_forward_in_bf16_and_returns_fp32():
    from unlearnctl.denoisers import PixelDenoiser
    from unlearnctl.diffusion import NoiseSchedule
    from unlearnctl.runtime import Runtime
    from methods.common import FakeCheckpoint

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
            self.seen = None

        def forward(self, x, t, class_labels=None):
            out = self.conv(x)
            self.seen = out.dtype
            return type("Out", (), {"sample": out})()

    unet = Probe()
    x, t = torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    schedule = NoiseSchedule(FakeCheckpoint(None).scheduler_config)
    full = PixelDenoiser(unet, schedule, Runtime.create("cpu", "fp32"))
    reference = full.predict(x, t)
    assert unet.seen == torch.float32
    low = PixelDenoiser(unet, schedule, Runtime.create("cpu", "bf16")).predict(x, t)
    assert unet.seen == torch.bfloat16 and low.dtype == torch.float32
    torch.testing.assert_close(low, reference, rtol=5e-2, atol=5e-2)
    full.predict(x, t)
    assert unet.seen == torch.float32  # the precision belongs to the run, not to the process


def test_fp16_loss_scale_backs_off_on_overflow_and_returns_true_gradients(monkeypatch):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    from unlearnctl.runtime import LossScale, Runtime

    # the scaling logic itself (fp16 autocast needs CUDA; gradients do not autocast)
    runtime = Runtime(torch.device("cpu"), "fp16", loss_scale=LossScale(value=2.0 ** 130, growth_interval=2))
    loss = (w * torch.tensor([3.0, 5.0])).sum()  # ∇ = (3, 5); × 2^130 overflows float32
    (g,) = runtime.gradients(loss, [w])
    torch.testing.assert_close(g, torch.tensor([3.0, 5.0]))
    assert runtime.loss_scale.value < 2.0 ** 127  # halved until the scaled gradient was finite
    scale = runtime.loss_scale.value
    runtime.gradients((w * 2).sum(), [w])  # second good step: grows (interval 2)
    assert runtime.loss_scale.value == 2 * scale
