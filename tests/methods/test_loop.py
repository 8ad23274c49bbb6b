"""The shared loop: config validation, forget-label mapping, finiteness, and resumable state."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearnctl.data import ForgetSet, ForgetSpec, ImageSet
from unlearnctl.diffusion import NoiseSchedule
from unlearnctl.errors import BadInputError, RuntimeFailure
from unlearnctl.methods import get_method
from unlearnctl.methods.base import MethodContext
from unlearnctl.unlearning import DEFAULT_PROBE_EVERY, UnlearnConfig, UnlearnState, _forget_images, run_loop
from methods.common import FakeCheckpoint, StubUNet


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


def _state(method: str, seed: int = 0, **params) -> UnlearnState:
    g = torch.Generator().manual_seed(0)  # the same data for every seed
    data = ImageSet(torch.rand(40, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 4, (40,), generator=g))
    forget = ImageSet(data.images[:8], data.labels[:8])
    retain = ImageSet(data.images[8:], data.labels[8:])
    checkpoint = FakeCheckpoint(num_classes=4)
    forget_set = ForgetSet("data", torch.zeros(40, dtype=torch.bool), forget, retain, [], ForgetSpec(indices=tuple(range(8))))
    ctx = MethodContext(unet=StubUNet(), schedule=NoiseSchedule(checkpoint.scheduler_config), checkpoint=checkpoint,
                        forget_set=forget_set, retain=retain, forget=forget, batch_size=8, label_dropout=0.1,
                        generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"))
    cls = get_method(method)
    runner = cls(cls.Config(**params), ctx)
    runner.prepare()
    return UnlearnState(runner, torch.optim.AdamW(ctx.parameters(), lr=1e-2, weight_decay=0.0), ctx.generator)


@pytest.mark.parametrize("method", ["siss", "salun", "neggrad"])
def test_a_resumed_run_equals_an_uninterrupted_one(method):
    params = {"max_forget_loss": 100.0} if method == "neggrad" else {}  # random data: no guard stop here
    straight = _state(method, **params)
    run_loop(straight, 6, UnlearnConfig(), None)
    first = _state(method, **params)
    run_loop(first, 3, UnlearnConfig(), None)
    saved = copy.deepcopy(first.state_dict())
    resumed = _state(method, seed=123, **params)  # a fresh run, different RNG, then loaded
    resumed.load_state_dict(saved)
    run_loop(resumed, 6, UnlearnConfig(), None)
    assert resumed.step == straight.step == 6
    for a, b in zip(straight.method.ctx.parameters(), resumed.method.ctx.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.history == straight.history


def test_non_finite_figures_stop_the_run():
    state = _state("naive")
    with torch.no_grad():
        state.method.ctx.unet.conv.weight.fill_(float("inf"))
    with pytest.raises(RuntimeFailure, match="became (nan|inf).*lower --lr"):
        run_loop(state, 3, UnlearnConfig(), None)
