"""Every method on a text-to-image model: its loss equals a direct computation on fixed tensors.

The context draws prompt ids (:class:`~unlearnctl.methods.base.MethodContext` with ``prompts``) and the latent
denoiser looks them up in its prompt table. The direct computations call the text UNet with the embeddings
themselves (:class:`EmbeddingView` turns a ``class_labels`` call into ``encoder_hidden_states = table[ids]``), so
the pixel tests' formulas apply verbatim; ESD's target is computed here from its equation.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from unlearnctl.denoisers import LatentTextDenoiser
from unlearnctl.diffusion import NoiseSchedule
from unlearnctl.methods import get_method
from methods.common import FixedContext, fixed_batch, gamma_sigma, mse
from methods.test_siss import _direct_siss_losses

PROMPTS = ["a bar", "a cross", "a ring", "a square"]  # ids 0..3; id 4 is the empty prompt


class StubTextUNet(torch.nn.Module):
    """ε_θ(m_t, t, e) = conv(m_t) + 10⁻³ t + W · mean_L(e): differentiable, cheap, prompt-dependent."""

    def __init__(self, width: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.attn2 = torch.nn.Linear(width, 1)  # where the text enters (the "cross-attention" of select_trainable)
        self.config = SimpleNamespace(in_channels=1, sample_size=8)

    def forward(self, m_t, t, encoder_hidden_states):
        out = self.conv(m_t) + 1e-3 * t.float().view(-1, 1, 1, 1)
        return SimpleNamespace(sample=out + self.attn2(encoder_hidden_states.mean(1)).view(-1, 1, 1, 1))


class EmbeddingView(torch.nn.Module):
    """The text UNet called the way the pixel formulas call a class-conditional one: ids → table rows."""

    def __init__(self, unet: StubTextUNet, table: torch.Tensor):
        super().__init__()
        self.unet, self.table = unet, table

    def forward(self, m_t, t, class_labels=None):
        return self.unet(m_t, t, encoder_hidden_states=self.table[class_labels])


class IdentityVAE(torch.nn.Module):
    dtype = torch.float32

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z):
        return SimpleNamespace(sample=z)


def text_context(b: dict, unet: StubTextUNet, mode: str = "class") -> tuple[FixedContext, torch.Tensor]:
    """A :class:`FixedContext` on a latent text denoiser with a fixed prompt table (``[5, 3, 6]``)."""
    ctx = FixedContext(unet, num_classes=4, mode=mode, **b)
    denoiser = LatentTextDenoiser(unet, NoiseSchedule(ctx.checkpoint.scheduler_config), vae=IdentityVAE(),
                                  text_encoder=None, tokenizer=None, scaling_factor=1.0)
    denoiser.prompts = [*PROMPTS, ""]
    denoiser.prompt_table = torch.randn(len(PROMPTS) + 1, 3, 6, generator=torch.Generator().manual_seed(7))
    ctx.denoiser, ctx.prompts = denoiser, list(PROMPTS)
    return ctx, denoiser.prompt_table


def method_on(ctx: FixedContext, name: str, **params):
    cls = get_method(name)
    return cls(cls.Config(**params), ctx)


def test_prompt_ids_are_looked_up_and_the_null_is_the_empty_prompt():
    b = fixed_batch(6)
    unet = StubTextUNet()
    ctx, table = text_context(b, unet)
    m_t, t, ids = b["x"], b["t"], b["c_x"]
    torch.testing.assert_close(ctx.denoiser.predict(m_t, t, ids), unet(m_t, t, table[ids]).sample)
    null = ctx.denoiser.null_condition(ids)
    assert ctx.null_class == 4 == int(null[0]) and torch.equal(null, torch.full_like(ids, 4))
    assert ctx.conditional and ctx.num_classes == len(PROMPTS)


@pytest.mark.parametrize("name", ["naive", "neggrad"])
def test_naive_and_neggrad_losses(name):
    b = fixed_batch(6)
    unet = StubTextUNet()
    ctx, table = text_context(b, unet)
    total, terms = method_on(ctx, name).loss()
    gamma, sigma = gamma_sigma(b["t"])
    view = EmbeddingView(unet, table)
    x, c = (b["x"], b["c_x"]) if name == "naive" else (b["a"], b["c_a"])
    direct = mse(view(gamma * x + sigma * b["eps"], b["t"], class_labels=c).sample, b["eps"]).mean()
    torch.testing.assert_close(total, direct if name == "naive" else -direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["siss", "siss-no-is"])
def test_siss_losses(name):
    b = fixed_batch(8)
    b["c_a"][:3] = b["c_x"][:3]  # some pairs share a prompt, others do not
    unet = StubTextUNet()
    ctx, table = text_context(b, unet)
    ctx.forget_set.retain.images = torch.zeros(90, 1, 8, 8)
    terms = method_on(ctx, "siss", lambda_=0.4).terms() if name == "siss" else method_on(ctx, name).terms()
    if name == "siss":
        expect_x, expect_a = _direct_siss_losses(b, EmbeddingView(unet, table), 0.4, 100, 10, True)
    else:  # the two plain denoising losses, scaled as SISS scales them
        gamma, sigma = gamma_sigma(b["t"])
        view = EmbeddingView(unet, table)
        expect_x = 100 / 90 * mse(view(gamma * b["x"] + sigma * b["eps"], b["t"], class_labels=b["c_x"]).sample, b["eps"]).mean()
        expect_a = 10 / 90 * mse(view(gamma * b["a"] + sigma * b["eps"], b["t"], class_labels=b["c_a"]).sample, b["eps"]).mean()
    torch.testing.assert_close(terms["L_x"], expect_x, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["L_a"], expect_a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, params, loss", [
    ("erasediff", {"forget_target": "pseudo-label"}, "forget_objective"),  # q with the pseudo-label target
    ("salun", {"relabel": "resample"}, "random_label_loss"),  # the random-label loss
])
def test_the_target_is_the_prediction_under_a_random_other_prompt(name, params, loss):
    b = fixed_batch(6)
    unet = StubTextUNet()
    ctx, table = text_context(b, unet)
    value = getattr(method_on(ctx, name, **params), loss)()
    gamma, sigma = gamma_sigma(b["t"])
    view = EmbeddingView(unet, table)
    m_t = gamma * b["a"] + sigma * b["eps"]
    expect = mse(view(m_t, b["t"], class_labels=b["c_a"]).sample, view(m_t, b["t"], class_labels=b["other"]).sample).mean()
    torch.testing.assert_close(value, expect, rtol=1e-5, atol=1e-6)


def test_dimum_memorisation_loss_under_the_forget_prompt():
    b = fixed_batch(6)
    unet = StubTextUNet()
    ctx, table = text_context(b, unet)
    method = method_on(ctx, "dimum", alternative="nearest-retain")
    method.x_alt, method.paired = torch.rand(10, 1, 8, 8) * 2 - 1, True
    loss = method.memorisation_loss()
    gamma, sigma = gamma_sigma(b["t"])
    x_alt = method.x_alt[ctx.fixed["index"]]
    m_t = gamma * x_alt + sigma * b["eps"]  # class (concept) mode: alternatives denoised under the forget prompt
    expect = mse(EmbeddingView(unet, table)(m_t, b["t"], class_labels=b["c_a"]).sample, b["eps"]).mean()
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eta", [1.0, 2.5])
def test_esd_target_is_the_frozen_base_negatively_guided(eta):
    b = fixed_batch(6)
    unet = StubTextUNet()
    ctx, table = text_context(b, unet)
    method = method_on(ctx, "esd-x", negative_guidance=eta, source="data")
    method.prepare()
    base = StubTextUNet()
    base.load_state_dict(unet.state_dict())  # θ*: a copy of the weights before any step
    with torch.no_grad():
        unet.attn2.weight.add_(0.5)  # the trained model moves on; the target must not
    loss = method.terms()["L_esd"]
    gamma, sigma = gamma_sigma(b["t"])
    x_t = gamma * b["a"] + sigma * b["eps"]
    e_null = base(x_t, b["t"], table[torch.full_like(b["c_a"], 4)]).sample
    e_c = base(x_t, b["t"], table[b["c_a"]]).sample
    target = e_null - eta * (e_c - e_null)
    torch.testing.assert_close(loss, mse(unet(x_t, b["t"], table[b["c_a"]]).sample, target).mean(), rtol=1e-5, atol=1e-6)


def test_esd_draws_x_t_from_the_models_own_partial_sample(monkeypatch):
    """``source = sampled``: x_t is the model's DDIM sample for c stopped after k steps, at that step's timestep."""
    from unlearnctl.diffusion import text_sampler

    b = fixed_batch(2)
    unet = StubTextUNet()
    ctx, table = text_context(b, unet)
    ctx.checkpoint.components = {"scheduler": {"config": ctx.checkpoint.scheduler_config}}
    ctx.forget_conditions = lambda: b["c_a"]
    method = method_on(ctx, "esd-x", sample_steps=5, start_guidance=2.0)
    method.prepare()
    k = int(torch.randint(0, 5, (1,), generator=torch.Generator().manual_seed(0)))  # the context's generator, seed 0
    x_t, t, c = method.concept_batch()
    scheduler = text_sampler(ctx.checkpoint.components, "ddim", 5)
    z = b["eps"] * scheduler.init_noise_sigma
    for tau in scheduler.timesteps[:k]:
        cond = unet(z, tau.repeat(2), table[b["c_a"]]).sample
        null = unet(z, tau.repeat(2), table[torch.full_like(b["c_a"], 4)]).sample
        z = scheduler.step(null + 2.0 * (cond - null), tau, z).prev_sample
    torch.testing.assert_close(x_t, z)
    assert torch.equal(t, scheduler.timesteps[k].repeat(2)) and torch.equal(c, b["c_a"])


def test_esd_refuses_a_model_without_text(tiny_conditional, shapes_split):
    from unlearnctl.data import ForgetSpec
    from unlearnctl.errors import BadInputError
    from unlearnctl.unlearning import UnlearnConfig, unlearn

    with pytest.raises(BadInputError, match="not text-conditional"):
        unlearn(tiny_conditional, "esd-x", ForgetSpec(classes=("2",)), UnlearnConfig(steps=1), data=shapes_split)


def test_a_random_other_prompt_is_a_retained_prompt_other_than_its_own():
    from unlearnctl.data import ImageSet

    b = fixed_batch(6)
    ctx, _ = text_context(b, StubTextUNet())
    ctx.retain = ImageSet(torch.zeros(6, 1, 8, 8), torch.tensor([1, 2, 3, 1, 2, 0]))
    ctx.forget = ImageSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 0]))  # prompt 0 is being forgotten
    c = torch.tensor([0, 1, 2, 3] * 50)
    other = type(ctx).__mro__[1].other_labels(ctx, c)  # MethodContext's own draw, not the fixed one
    assert set(other.tolist()) <= {1, 2, 3} and bool((other != c).all())
    assert set(other[c == 0].tolist()) == {1, 2, 3}  # any retained prompt for the forgotten one
