"""The tiny KL autoencoder of the text-to-image default (unlearnctl/autoencoder.py)."""

from __future__ import annotations

import pytest
import torch

from unlearnctl.autoencoder import reconstruction_errors, tiny_autoencoder_config, train_autoencoder
from unlearnctl.errors import BadInputError


def test_config_builds_an_autoencoder_with_4x4x4_latents():
    from diffusers import AutoencoderKL

    model = AutoencoderKL(**tiny_autoencoder_config(1)).eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        posterior = model.encode(x).latent_dist
        assert posterior.mode().shape == (3, 4, 4, 4)
        assert model.decode(posterior.mode()).sample.shape == (3, 1, 8, 8)
    assert AutoencoderKL(**tiny_autoencoder_config(3, sample_size=16, block_out_channels=(8, 16, 16))).config.in_channels == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(channels=2), "channels must be 1 or 3"),
    (dict(channels=1, block_out_channels=(12, 64)), "must divide"),
    (dict(channels=1, sample_size=6, block_out_channels=(8, 8, 8)), "divisible by 4"),
])
def test_bad_config_is_bad_input(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        tiny_autoencoder_config(**kwargs)


def test_short_training_reduces_heldout_reconstruction_error(shapes_split):
    train, heldout = shapes_split.train.images, shapes_split.heldout.images
    config = tiny_autoencoder_config(1, block_out_channels=(8, 16))
    fit = train_autoencoder(train, config, steps=60, batch_size=16, lr=3e-3, seed=0, heldout=heldout)
    assert fit.num_heldout == len(heldout)
    assert fit.heldout_mse < 0.5 * fit.untrained_mse
    assert fit.heldout_mse_ci95[0] <= fit.heldout_mse <= fit.heldout_mse_ci95[1]
    assert fit.heldout_mse == pytest.approx(float(reconstruction_errors(fit.model, heldout).mean()), rel=1e-5)
    assert fit.model.config.scaling_factor == pytest.approx(1 / fit.latent_std)
    with torch.no_grad():  # the SD convention: scaled latents of the training images have unit std
        latents = fit.model.encode(train).latent_dist.sample() * fit.model.config.scaling_factor
    assert 0.8 < float(latents.std()) < 1.25


def test_training_is_deterministic_and_checks_its_input(shapes_split):
    images = shapes_split.train.images[:40]
    config = tiny_autoencoder_config(1, block_out_channels=(8, 8))
    first = train_autoencoder(images, config, steps=3, batch_size=8, seed=1)
    second = train_autoencoder(images, config, steps=3, batch_size=8, seed=1)
    assert first.num_heldout == 4  # 10% held out when no held-out images are given
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(BadInputError, match="the autoencoder config"):
        train_autoencoder(torch.zeros(4, 3, 8, 8), config, steps=1)
