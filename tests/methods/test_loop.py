"""The shared loop: config validation, forget-label mapping, finiteness, and resumable state."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearnctl.data import ForgetSet, ForgetSpec, ImageSet
from unlearnctl.errors import BadInputError, RuntimeFailure
from unlearnctl.unlearning import DEFAULT_PROBE_EVERY, UnlearnConfig, _forget_images, run_loop
from methods.common import FakeCheckpoint, make_state


@pytest.mark.parametrize("bad", [{"steps": 0}, {"lr": 0.0}, {"batch_size": 0}, {"grad_clip": 0.0}, {"label_dropout": 1.0},
                                 {"probe_every": -1}, {"until_forget_rate": 1.5}, {"probe_samples": 0}])
def test_config_validation(bad):
    with pytest.raises(BadInputError):
        UnlearnConfig(**bad)


def test_until_forget_rate_probes_by_default():
    assert UnlearnConfig().probe_interval == 0
    assert UnlearnConfig(until_forget_rate=0.1).probe_interval == DEFAULT_PROBE_EVERY
    assert UnlearnConfig(until_forget_rate=0.1, probe_every=3).probe_interval == 3


def test_forget_images_from_a_file_map_to_the_null_class():
    images = torch.zeros(3, 1, 8, 8)
    forget = ImageSet(images, torch.tensor([2, -1, 0]), ["a", "b", "c"])
    forget_set = ForgetSet("data", torch.zeros(5, dtype=torch.bool), forget, forget, [], ForgetSpec(images="x.npz"))
    assert _forget_images(forget_set, FakeCheckpoint(num_classes=3)).labels.tolist() == [2, 3, 0]
    assert _forget_images(forget_set, FakeCheckpoint(num_classes=None)).labels is None


@pytest.mark.parametrize("method", ["siss", "salun", "neggrad"])
def test_a_resumed_run_equals_an_uninterrupted_one(method):
    params = {"max_forget_loss": 100.0} if method == "neggrad" else {}  # random data: no guard stop here
    straight = make_state(method, **params)
    run_loop(straight, 6, UnlearnConfig(), None)
    first = make_state(method, **params)
    run_loop(first, 3, UnlearnConfig(), None)
    saved = copy.deepcopy(first.state_dict())
    resumed = make_state(method, seed=123, **params)  # a fresh run, different RNG, then loaded
    resumed.load_state_dict(saved)
    run_loop(resumed, 6, UnlearnConfig(), None)
    assert resumed.step == straight.step == 6
    for a, b in zip(straight.method.ctx.parameters(), resumed.method.ctx.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.history == straight.history


def test_non_finite_figures_stop_the_run():
    state = make_state("naive")
    with torch.no_grad():
        state.method.ctx.unet.conv.weight.fill_(float("inf"))
    with pytest.raises(RuntimeFailure, match="became (nan|inf).*lower --lr"):
        run_loop(state, 3, UnlearnConfig(), None)
