"""The shared loop: config validation, forget-label mapping, finiteness, and resumable state."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearnctl.data import ForgetSet, ForgetSpec, ImageSet
from unlearnctl.errors import BadInputError, RuntimeFailure
from unlearnctl.metrics.intervals import rate_fields, wilson
from unlearnctl.unlearning import DEFAULT_PROBE_EVERY, UnlearnConfig, _forget_images, run_loop, until_record
from methods.common import FakeCheckpoint, make_state


@pytest.mark.parametrize("bad", [{"steps": 0}, {"lr": 0.0}, {"batch_size": 0}, {"grad_clip": 0.0}, {"label_dropout": 1.0},
                                 {"probe_every": -1}, {"until_forget_rate": 1.5}, {"probe_samples": 0},
                                 {"lr_schedule": "linear"}, {"ema_decay": 1.0}, {"ema_decay": -0.1},
                                 {"stop_on": "lower"}])
def test_config_validation(bad):
    with pytest.raises(BadInputError):
        UnlearnConfig(**bad)


def test_unset_loop_settings_take_the_method_defaults():
    defaults = {"steps": 7, "lr": 3e-4, "batch_size": 5, "lr_schedule": "cosine", "ema_decay": 0.5}
    assert UnlearnConfig().with_defaults(defaults) == UnlearnConfig(**defaults)
    given = UnlearnConfig(steps=2, lr_schedule="constant", ema_decay=0.0).with_defaults(defaults)
    assert (given.steps, given.lr, given.lr_schedule, given.ema_decay) == (2, 3e-4, "constant", 0.0)  # 0 is a choice, not unset


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


@pytest.mark.parametrize("method, loop", [("siss", {}), ("salun", {}), ("neggrad", {}),
                                          ("naive", {"lr_schedule": "cosine", "ema_decay": 0.9})])
def test_a_resumed_run_equals_an_uninterrupted_one(method, loop):
    params = {"max_forget_loss": 100.0} if method == "neggrad" else {}  # random data: no guard stop here
    ema_decay = loop.get("ema_decay", 0.0)
    config = UnlearnConfig(**loop)
    straight = make_state(method, ema_decay=ema_decay, **params)
    run_loop(straight, steps=6, config=config)
    first = make_state(method, ema_decay=ema_decay, **params)
    _interrupt_after(first, 3)
    with pytest.raises(KeyboardInterrupt):
        run_loop(first, steps=6, config=config)
    saved = copy.deepcopy(first.state_dict())
    resumed = make_state(method, seed=123, ema_decay=ema_decay, **params)  # a fresh run, different RNG, then loaded
    resumed.load_state_dict(saved)
    run_loop(resumed, steps=6, config=config)
    assert resumed.step == straight.step == 6
    for a, b in zip(straight.method.ctx.parameters(), resumed.method.ctx.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(straight.result_weights().values(), resumed.result_weights().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.history == straight.history


def _interrupt_after(state, steps: int) -> None:
    """Make the loop stop with Ctrl-C when it asks for step ``steps + 1`` (a run killed mid-way)."""
    step = state.method.step

    def interrupted():
        if state.step == steps:
            raise KeyboardInterrupt
        return step()

    state.method.step = interrupted


def test_a_state_with_ema_does_not_resume_a_run_without():
    with_ema = make_state("naive", ema_decay=0.9)
    run_loop(with_ema, steps=2, config=UnlearnConfig(ema_decay=0.9))
    with pytest.raises(BadInputError, match="EMA"):
        make_state("naive").load_state_dict(copy.deepcopy(with_ema.state_dict()))


def _learning_rates(state, steps: int, config: UnlearnConfig) -> list[float]:
    """The learning rate of every optimizer step the loop takes."""
    used, step = [], state.optimizer.step

    def recording_step(*args, **kwargs):
        used.append(state.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    state.optimizer.step = recording_step
    run_loop(state, steps=steps, config=config)
    return used


def test_cosine_schedule_decays_from_the_peak_to_a_tenth():
    import math

    peak, steps = 1e-2, 8  # make_state's optimizer runs at 1e-2
    used = _learning_rates(make_state("naive"), steps, UnlearnConfig(lr_schedule="cosine"))
    expected = [peak * (0.1 + 0.45 * (1 + math.cos(math.pi * i / steps))) for i in range(steps)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert used[0] == pytest.approx(peak) and used[-1] > 0.1 * peak
    assert _learning_rates(make_state("naive"), 4, UnlearnConfig()) == [peak] * 4


def test_ema_weights_are_the_moving_average_of_the_raw_trajectory():
    decay, steps = 0.8, 5
    raw = make_state("naive")
    trajectory = [{k: v.clone() for k, v in raw.method.ctx.unet.state_dict().items()}]
    for step in range(1, steps + 1):  # the same run, one step at a time, keeping every step's weights
        run_loop(raw, steps=step, config=UnlearnConfig())
        trajectory.append({k: v.clone() for k, v in raw.method.ctx.unet.state_dict().items()})
    averaged = make_state("naive", ema_decay=decay)
    run_loop(averaged, steps=steps, config=UnlearnConfig(ema_decay=decay))
    expected = trajectory[0]
    for n, weights in enumerate(trajectory[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))  # the EMA's warm-up
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in weights}
    for name, value in averaged.result_weights().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7)
    for a, b in zip(raw.method.ctx.parameters(), averaged.method.ctx.parameters()):  # the EMA does not steer the run
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(averaged.result_weights()["conv.weight"], averaged.method.ctx.unet.conv.weight)


def test_non_finite_figures_stop_the_run():
    state = make_state("naive")
    with torch.no_grad():
        state.method.ctx.unet.conv.weight.fill_(float("inf"))
    with pytest.raises(RuntimeFailure, match="became (nan|inf).*lower --lr"):
        run_loop(state, steps=3, config=UnlearnConfig())


class CountingProbe:
    """A probe whose k-th call finds ``hits[k]`` forgotten-class samples out of ``n``."""

    def __init__(self, hits: list[int], n: int):
        self.hits, self.n, self.seconds = list(hits), n, 0.0

    def __call__(self, unet) -> dict:
        return rate_fields("forget_rate", self.hits.pop(0), self.n)


@pytest.mark.parametrize("stop_on, stopped_at", [("rate", 2), ("upper", 4)])
def test_until_forget_rate_stops_by_its_rule_and_records_the_interval(stop_on, stopped_at):
    # rates 0.5, 0.2, 0.09, 0.05, 0.02 at steps 0..4 on 100 samples; target 0.1:
    # the point estimate meets it at step 2 (0.09), the Wilson upper bound only at step 4 (0.02 → upper 0.070)
    assert wilson(9, 100)[1] > 0.1 and wilson(5, 100)[1] > 0.1 and wilson(2, 100)[1] <= 0.1
    config = UnlearnConfig(until_forget_rate=0.1, stop_on=stop_on, probe_every=1)
    state = make_state("naive")
    run_loop(state, steps=10, config=config, probe=CountingProbe([50, 20, 9, 5, 2, 1, 1, 1, 1, 1, 1], 100))
    assert state.step == stopped_at and len(state.probes) == stopped_at + 1
    hits = {2: 9, 4: 2}[stopped_at]
    low, high = wilson(hits, 100)
    assert state.stopped.startswith(("forget rate <= 0.1", "upper 95% bound of the forget rate <= 0.1"))
    assert f"at step {stopped_at}" in state.stopped and f"{hits}/100" in state.stopped
    record = until_record(state, config)
    assert record == {"target": 0.1, "stop_on": stop_on, "reached": True, "probe_samples": 100, "probe_steps": 25,
                      "step": stopped_at, "forget_rate": hits / 100, "forget_rate_count": hits, "forget_rate_n": 100,
                      "forget_rate_ci95_low": low, "forget_rate_ci95_high": high}


def test_until_forget_rate_not_reached_records_the_last_probe():
    config = UnlearnConfig(until_forget_rate=0.01, probe_every=2)
    state = make_state("naive")
    run_loop(state, steps=3, config=config, probe=CountingProbe([50, 40, 30], 200))
    assert state.stopped == "completed" and state.step == 3 and [p["step"] for p in state.probes] == [0, 2]
    record = until_record(state, config)
    assert record["reached"] is False and record["step"] == 2 and record["forget_rate_count"] == 40
    assert until_record(state, UnlearnConfig()) is None
