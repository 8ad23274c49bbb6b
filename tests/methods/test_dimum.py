"""DiMUM: the memorisation loss for class and data forgetting, the alternative sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearnctl.data import ForgetSpec
from unlearnctl.errors import BadInputError
from unlearnctl.methods.dimum import DiMUM, DiMUMConfig
from methods.common import FixedContext, StubUNet, check_basics, fixed_batch, gamma_sigma, mse, run


@pytest.mark.parametrize("mode", ["class", "data"])
def test_memorisation_loss_matches_a_direct_computation(mode):
    b = fixed_batch(6)
    unet = StubUNet()
    ctx = FixedContext(unet, mode=mode, **b)
    method = DiMUM(DiMUMConfig(alternative="nearest-retain"), ctx)
    method.x_alt, method.paired = torch.rand(10, 1, 8, 8) * 2 - 1, True  # one alternative per forget image
    loss = method.memorisation_loss()
    gamma, sigma = gamma_sigma(b["t"])
    x_alt = method.x_alt[ctx.fixed["index"]]
    if mode == "class":  # alternatives, noised, denoised under the forget condition
        m_t = gamma * x_alt + sigma * b["eps"]
        target = b["eps"]
    else:  # the forget sample's noisy input leads to its alternative
        m_t = gamma * b["a"] + sigma * b["eps"]
        target = (m_t - gamma * x_alt) / sigma
    expect = mse(unet(m_t, b["t"], class_labels=b["c_a"]).sample, target).mean()
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)


def test_loss_is_retain_plus_beta_memorisation():
    b = fixed_batch(6)
    ctx = FixedContext(StubUNet(), **b)
    method = DiMUM(DiMUMConfig(beta=2.5, alternative="nearest-retain"), ctx)
    method.x_alt, method.paired = torch.rand(10, 1, 8, 8), True
    total, terms = method.loss()
    torch.testing.assert_close(total, terms["L_r"] + 2.5 * terms["L_mem"])


def test_nearest_retain_pairs_each_forget_image_with_its_nearest_retain_image(tiny_unconditional, shapes_split):
    model, report = run(tiny_unconditional, shapes_split, "dimum", ForgetSpec(indices=(0, 70, 150)), steps=1)
    assert report["prepared"] == {"alternative": "nearest-retain", "num_alternatives": 3}
    # recompute the pairing directly with numpy
    train = shapes_split.train.images.flatten(1).numpy()
    mask = np.zeros(len(train), bool)
    mask[[0, 70, 150]] = True
    retain, forget = train[~mask], train[mask]
    nearest = [int(np.argmin(((retain - f) ** 2).sum(1))) for f in forget]
    from unlearnctl.data import resolve_forget
    from unlearnctl.methods.base import MethodContext
    from unlearnctl.denoisers import PixelDenoiser
    from unlearnctl.diffusion import NoiseSchedule
    from unlearnctl.runtime import Runtime

    forget_set = resolve_forget(ForgetSpec(indices=(0, 70, 150)), shapes_split)
    denoiser = PixelDenoiser(None, NoiseSchedule(tiny_unconditional.scheduler_config), Runtime(torch.device("cpu")))
    ctx = MethodContext(denoiser=denoiser, checkpoint=tiny_unconditional,
                        forget_set=forget_set, retain=forget_set.retain, forget=forget_set.forget, batch_size=4,
                        label_dropout=0.0, generator=torch.Generator().manual_seed(0))
    method = DiMUM(DiMUMConfig(), ctx)
    method.prepare()
    assert method.paired
    torch.testing.assert_close(method.x_alt.flatten(1), torch.from_numpy(retain[nearest]))


def test_alternative_sources(tiny_conditional, tiny_unconditional, shapes_split, tmp_path):
    spec = ForgetSpec(classes=("2",))
    _, report = run(tiny_conditional, shapes_split, "dimum", spec, steps=1, params={"alternative": "class:0"})
    assert report["prepared"]["num_alternatives"] == int((shapes_split.train.labels == 0).sum())
    _, report = run(tiny_conditional, shapes_split, "dimum", spec, steps=1, params={"num_generated": 8})
    assert report["prepared"] == {"alternative": "generated", "num_alternatives": 8}
    images = np.zeros((5, 8, 8), np.uint8)
    np.savez(tmp_path / "alt.npz", images=images)
    _, report = run(tiny_conditional, shapes_split, "dimum", spec, steps=1, params={"alternative": f"folder:{tmp_path / 'alt.npz'}"})
    assert report["prepared"]["num_alternatives"] == 5
    with pytest.raises(BadInputError, match="itself being forgotten"):
        run(tiny_conditional, shapes_split, "dimum", spec, steps=1, params={"alternative": "class:2"})
    with pytest.raises(BadInputError, match="class-conditional"):
        run(tiny_unconditional, shapes_split, "dimum", ForgetSpec(indices=(0,)), steps=1, params={"alternative": "generated"})


def test_config_validation():
    for bad in ({"beta": 0.0}, {"alternative": "somewhere"}, {"alternative": "class:"}, {"num_generated": 0}):
        with pytest.raises(BadInputError):
            DiMUMConfig(**bad)


def test_runs_on_the_tiny_models(tiny_conditional, tiny_unconditional, shapes_split):
    check_basics(tiny_conditional, shapes_split, "dimum", ForgetSpec(classes=("2",)), {"alternative": "class:0"})
    check_basics(tiny_unconditional, shapes_split, "dimum", ForgetSpec(indices=(0, 1)))
