"""NegGrad: gradient ascent on the forget loss, the optional retain term, the divergence guard."""

from __future__ import annotations

import pytest
import torch

from unlearnctl.data import ForgetSpec
from unlearnctl.methods.neggrad import NegGrad, NegGradConfig
from methods.common import FixedContext, StubUNet, check_basics, fixed_batch, gamma_sigma, mse, run


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_loss_is_minus_forget_loss_plus_alpha_retain(alpha):
    b = fixed_batch(6)
    unet = StubUNet()
    total, terms = NegGrad(NegGradConfig(alpha=alpha), FixedContext(unet, **b)).loss()
    gamma, sigma = gamma_sigma(b["t"])
    L_f = mse(unet(gamma * b["a"] + sigma * b["eps"], b["t"], class_labels=b["c_a"]).sample, b["eps"]).mean()
    L_r = mse(unet(gamma * b["x"] + sigma * b["eps"], b["t"], class_labels=b["c_x"]).sample, b["eps"]).mean()
    torch.testing.assert_close(total, -L_f + alpha * L_r, rtol=1e-5, atol=1e-6)
    assert ("L_r" in terms) == (alpha > 0)


def test_divergence_guard_stops_before_the_offending_update(tiny_conditional, shapes_split):
    model, report = run(tiny_conditional, shapes_split, "neggrad", ForgetSpec(classes=("2",)), steps=5,
                        params={"max_forget_loss": 1e-6})
    assert report["steps_run"] == 0 and report["stopped"].startswith("divergence guard")
    assert all(torch.equal(model.state_dict[k], v) for k, v in tiny_conditional.state_dict.items())
    assert model.lineage[-1]["stopped"] == report["stopped"]


def test_runs_on_the_tiny_models(tiny_conditional, tiny_unconditional, shapes_split):
    check_basics(tiny_conditional, shapes_split, "neggrad", ForgetSpec(classes=("2",)))
    check_basics(tiny_unconditional, shapes_split, "neggrad", ForgetSpec(indices=(0, 1)), {"alpha": 1.0})
