"""Naive deletion: the retain loss only; the forget set is never used."""

from __future__ import annotations

import torch

from unlearnctl.data import ForgetSpec
from unlearnctl.methods.naive import Naive, NaiveConfig
from methods.common import FixedContext, StubUNet, check_basics, fixed_batch, gamma_sigma, mse


def test_loss_is_the_retain_denoising_loss():
    b = fixed_batch(6)
    unet = StubUNet()
    b["a"] = torch.full_like(b["a"], float("nan"))  # would poison the loss if the forget set were used
    total, terms = Naive(NaiveConfig(), FixedContext(unet, **b)).loss()
    gamma, sigma = gamma_sigma(b["t"])
    expect = mse(unet(gamma * b["x"] + sigma * b["eps"], b["t"], class_labels=b["c_x"]).sample, b["eps"]).mean()
    torch.testing.assert_close(total, expect, rtol=1e-5, atol=1e-6)


def test_runs_on_the_tiny_models(tiny_conditional, tiny_unconditional, shapes_split):
    check_basics(tiny_conditional, shapes_split, "naive", ForgetSpec(classes=("2",)))
    check_basics(tiny_unconditional, shapes_split, "naive", ForgetSpec(indices=(0, 1)))
