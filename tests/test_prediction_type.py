"""The loss target follows the scheduler's ``prediction_type`` everywhere: training, every unlearning method,
the attack. For ``m_t = γ_t x₀ + σ_t ε`` the target is ε (epsilon), v = γ_t·ε − σ_t·x₀ (v_prediction) or x₀
(sample), each checked here against a direct computation with γ_t, σ_t computed independently."""

from __future__ import annotations

import pytest
import torch

from methods.common import FakeCheckpoint, FixedContext, StubUNet, fixed_batch, gamma_sigma, mse

KINDS = ("v_prediction", "sample")


def direct_target(kind: str, t, x0, eps) -> torch.Tensor:
    gamma, sigma = gamma_sigma(t)
    return gamma * eps - sigma * x0 if kind == "v_prediction" else x0


def implied_noise(t, m_t, x0) -> torch.Tensor:
    """ε with m_t = γ_t x₀ + σ_t ε."""
    gamma, sigma = gamma_sigma(t)
    return (m_t - gamma * x0) / sigma


def noised(t, x0, eps) -> torch.Tensor:
    gamma, sigma = gamma_sigma(t)
    return gamma * x0 + sigma * eps


class TypedCheckpoint(FakeCheckpoint):
    def __init__(self, num_classes, kind):
        super().__init__(num_classes)
        self.scheduler_config = {**self.scheduler_config, "prediction_type": kind}


def context(kind: str, b: dict, conditional: bool = True, **extra) -> FixedContext:
    ctx = FixedContext(StubUNet(num_embeds=5 if conditional else None), num_classes=4 if conditional else None,
                       **{k: b[k] for k in ("x", "c_x", "a", "c_a", "t", "eps", "coins", "uniform", "other")}, **extra)
    from methods.common import denoiser_of

    if not conditional:
        ctx.fixed.update(c_x=None, c_a=None)
    ctx.checkpoint = TypedCheckpoint(4 if conditional else None, kind)
    ctx.denoiser = denoiser_of(ctx.unet, ctx.checkpoint)
    assert ctx.denoiser.prediction_type == kind
    return ctx


def net(ctx, m_t, t, c):
    return ctx.unet(m_t, t, class_labels=c).sample


@pytest.mark.parametrize("kind", ("epsilon", *KINDS))
def test_schedule_target_from_any_two_of_m_x0_eps(kind):
    from unlearnctl.diffusion import NoiseSchedule

    b = fixed_batch(6)
    schedule = NoiseSchedule(TypedCheckpoint(None, kind).scheduler_config)
    t, x0, eps = b["t"], b["x"], b["eps"]
    m_t = noised(t, x0, eps)
    expect = eps if kind == "epsilon" else direct_target(kind, t, x0, eps)
    torch.testing.assert_close(schedule.target(t, x0=x0, eps=eps), expect)
    torch.testing.assert_close(schedule.target(t, m_t=m_t, x0=x0), expect, rtol=1e-3, atol=2e-3)  # σ_t = 0.01 at t = 0


@pytest.mark.parametrize("kind", KINDS)
def test_every_fine_tuning_method_uses_the_model_target(kind):
    """Each method's terms recomputed with the target of ``kind`` from the fixed draws."""
    from unlearnctl.methods import get_method

    b = fixed_batch(6)
    t, x, a, eps, c_x, c_a = b["t"], b["x"], b["a"], b["eps"], b["c_x"], b["c_a"]
    mean = lambda p, q: mse(p, q).mean()

    def terms(name, conditional=True, mode="class", **params):
        ctx = context(kind, b, conditional, mode=mode)
        cls = get_method(name)
        method = cls(cls.Config(**params), ctx)
        method.C, method.factor = 0.1, None  # siss: no calibration needed for the terms
        method.steps_taken, method.head_ratio = 0, None
        return ctx, method.terms()

    # naive and NegGrad: the ordinary loss on D_r / D_f
    ctx, got = terms("naive")
    torch.testing.assert_close(got["L_r"], mean(net(ctx, noised(t, x, eps), t, c_x), direct_target(kind, t, x, eps)))
    ctx, got = terms("neggrad", alpha=1.0)
    torch.testing.assert_close(got["L_f"], mean(net(ctx, noised(t, a, eps), t, c_a), direct_target(kind, t, a, eps)))

    # SISS (No IS): two forwards with shared t and ε
    ctx, got = terms("siss-no-is")
    n, k = ctx.n, ctx.k
    torch.testing.assert_close(got["L_x"], n / (n - k) * mean(net(ctx, noised(t, x, eps), t, c_x), direct_target(kind, t, x, eps)))
    torch.testing.assert_close(got["L_a"], k / (n - k) * mean(net(ctx, noised(t, a, eps), t, c_a), direct_target(kind, t, a, eps)))

    # SISS: one forward of the mixture sample; each term's target is the one that denoises m_t to x (or a)
    ctx, got = terms("siss", conditional=False, mode="data")
    m_t = noised(t, torch.where(b["coins"].view(-1, 1, 1, 1), a, x), eps)
    out = net(ctx, m_t, t, None)
    from unlearnctl.methods.siss import mixture_distances, siss_weights

    gamma, sigma = gamma_sigma(t)
    w_x, w_a = siss_weights(*mixture_distances(m_t, x, a, gamma, sigma), 0.5)
    target_x = direct_target(kind, t, x, implied_noise(t, m_t, x))
    target_a = direct_target(kind, t, a, implied_noise(t, m_t, a))
    torch.testing.assert_close(got["L_x"], n / (n - k) * (w_x * mse(out, target_x)).mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["L_a"], k / (n - k) * (w_a * mse(out, target_a)).mean(), rtol=1e-4, atol=1e-5)

    # EraseDiff: F is the ordinary retain loss; the uniform forget target ε_f ~ U[0,1) is the noise the model
    # should predict, so its target is the one that noise implies: x₀ = (m_t − σ_t ε_f)/γ_t
    ctx, got = terms("erasediff")
    m_a = noised(t, a, eps)
    u = b["uniform"]
    torch.testing.assert_close(got["F"], mean(net(ctx, noised(t, x, eps), t, c_x), direct_target(kind, t, x, eps)))
    x0_f = (m_a - sigma * u) / gamma
    torch.testing.assert_close(got["q"], mean(net(ctx, m_a, t, c_a), direct_target(kind, t, x0_f, u)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_dimum_and_salun_alternative_targets(kind):
    """DiMUM's data mode and SalUn's unconditional relabelling lead the forget input to another image x_alt:
    the target denoises m_t = γ_t a + σ_t ε to x_alt."""
    from unlearnctl.methods.dimum import DiMUM, DiMUMConfig
    from unlearnctl.methods.salun import SalUn, SalUnConfig

    b = fixed_batch(6, num_classes=None)
    t, a, eps = b["t"], b["a"], b["eps"]
    ctx = context(kind, b, conditional=False, mode="data")
    method = DiMUM(DiMUMConfig(), ctx)
    method.x_alt, method.paired = b["x"], True  # paired alternatives: forget image i → x_i
    m_t = noised(t, a, eps)
    expect = mse(net(ctx, m_t, t, None), direct_target(kind, t, b["x"], implied_noise(t, m_t, b["x"]))).mean()
    torch.testing.assert_close(method.memorisation_loss(), expect, rtol=1e-4, atol=1e-5)

    ctx = context(kind, b, conditional=False, mode="data")
    ctx.retain.images[:6] = b["x"]
    salun = SalUn(SalUnConfig(), ctx)
    salun.pseudo = torch.arange(6)  # forget image i relabelled as retain image i
    torch.testing.assert_close(salun.random_label_loss(), expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_training_and_the_attack_use_the_model_target(kind, shapes_split, monkeypatch, tmp_path):
    """``train`` of a ``kind`` model, then the DiMRA attack on it: every training loss equals the direct
    computation from the same draws (the spy replays the generator)."""
    import unlearnctl.training as training
    from unlearnctl.attacks.dimra import AttackConfig, relearn_attack
    from unlearnctl.training import TrainConfig, train_model

    original, checked = training.denoising_loss, []

    def spy(denoiser, x, labels, generator):
        replay = torch.Generator().manual_seed(0)
        replay.set_state(generator.get_state())
        loss = original(denoiser, x, labels, generator)
        t = torch.randint(0, 1000, (x.shape[0],), generator=replay)
        eps = torch.randn(x.shape, generator=replay)
        out = denoiser.network(noised(t, x, eps), t, class_labels=labels).sample
        torch.testing.assert_close(loss, mse(out, direct_target(kind, t, x, eps)), rtol=1e-4, atol=1e-5)
        checked.append(denoiser.prediction_type)
        return loss

    monkeypatch.setattr(training, "denoising_loss", spy)
    model = train_model(shapes_split, conditional=True, preset="tiny", config=TrainConfig(steps=2, batch_size=8, warmup_steps=0),
                        device="cpu", prediction_type=kind)
    assert model.scheduler_config["prediction_type"] == kind and checked == [kind, kind]
    relearn_attack(model, "retain", AttackConfig(steps=2, batch_size=8), data=shapes_split, device="cpu")
    assert checked == [kind] * 4


def test_import_keeps_and_checks_the_prediction_type(tmp_path, tiny_unconditional):
    import json

    from unlearnctl.checkpoint import export_diffusers, import_diffusers
    from unlearnctl.errors import BadInputError

    v_model = type(tiny_unconditional)(**{**tiny_unconditional.__dict__, "scheduler_config":
                                          {**tiny_unconditional.scheduler_config, "prediction_type": "v_prediction"}})
    folder = export_diffusers(v_model, tmp_path / "v")
    imported = import_diffusers(folder, tiny_unconditional.data)
    assert imported.scheduler_config["prediction_type"] == "v_prediction"
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "flow"}))
    with pytest.raises(BadInputError, match="prediction type 'flow' is not supported"):
        import_diffusers(folder, tiny_unconditional.data)
