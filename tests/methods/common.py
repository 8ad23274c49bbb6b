"""Shared test base for unlearning methods.

* :class:`FixedContext` — a :class:`MethodContext` whose every random draw returns a preset tensor, so a
  method's loss can be recomputed independently, by a direct formula, from the same inputs.
* :class:`StubUNet` — a one-layer stand-in for ``UNet2DModel`` (same call signature, differentiable).
* :func:`run` — a few real unlearning steps on the tiny session models.
* :func:`check_basics` — what every fine-tuning method must satisfy (finite, weights change, lineage).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from unlearnctl.checkpoint import default_scheduler, plain_config
from unlearnctl.data import ForgetSet, ForgetSpec, ImageSet
from unlearnctl.denoisers import PixelDenoiser
from unlearnctl.diffusion import NoiseSchedule
from unlearnctl.methods.base import MethodContext
from unlearnctl.unlearning import UnlearnConfig, UnlearnState, unlearn

FAST = dict(batch_size=16, device="cpu")  # loop settings for tests: small batches on the CPU


class StubUNet(torch.nn.Module):
    """ε_θ(m_t, t, c) = conv(m_t) + embedding(c): differentiable, cheap, label-dependent."""

    def __init__(self, channels: int = 1, num_embeds: int | None = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.embed = torch.nn.Embedding(num_embeds, channels) if num_embeds else None

    def forward(self, m_t, t, class_labels=None):
        out = self.conv(m_t) + 1e-3 * t.float().view(-1, 1, 1, 1)
        if class_labels is not None:
            out = out + self.embed(class_labels).view(-1, out.shape[1], 1, 1)
        return SimpleNamespace(sample=out)


class FakeCheckpoint:
    """The few checkpoint attributes a method reads."""

    text_conditional = False

    def __init__(self, num_classes: int | None):
        self.conditional = num_classes is not None
        self.null_class = num_classes if num_classes is not None else None
        self.num_classes = num_classes or 0
        self.scheduler_config = plain_config(default_scheduler().config)
        self.data = {"resolution": 8, "channels": 1}


def denoiser_of(unet, checkpoint) -> PixelDenoiser:
    """The pixel denoiser of ``unet`` with the checkpoint's schedule and null class."""
    return PixelDenoiser(unet, NoiseSchedule(checkpoint.scheduler_config), null_class=checkpoint.null_class)


class FixedContext(MethodContext):
    """Every draw returns the next preset tensor given at construction (and records nothing else)."""

    def __init__(self, unet, *, x, c_x, a, c_a, t, eps, coins=None, uniform=None, other=None, index=None,
                 num_classes=4, n=100, k=10, mode="class", class_ids=(3,)):
        checkpoint = FakeCheckpoint(num_classes)
        retain = ImageSet(torch.zeros(n - k, 1, 8, 8), torch.zeros(n - k, dtype=torch.long) if num_classes else None)
        forget = ImageSet(torch.zeros(k, 1, 8, 8), torch.zeros(k, dtype=torch.long) if num_classes else None)
        forget_set = ForgetSet(mode, torch.zeros(n - k, dtype=torch.bool), forget, retain, list(class_ids), ForgetSpec())
        super().__init__(denoiser=denoiser_of(unet, checkpoint), checkpoint=checkpoint,
                         forget_set=forget_set, retain=retain, forget=forget, batch_size=len(x), label_dropout=0.0,
                         generator=torch.Generator().manual_seed(0))
        self.fixed = dict(x=x, c_x=c_x, a=a, c_a=c_a, t=t, eps=eps, coins=coins, uniform=uniform, other=other,
                          index=index if index is not None else torch.arange(len(a)))

    def retain_batch(self, batch_size=None, drop_labels=True):
        return self.fixed["x"], self.fixed["c_x"]

    def forget_batch(self, batch_size=None):
        return self.fixed["a"], self.fixed["c_a"], self.fixed["index"]

    def timesteps(self, batch_size):
        return self.fixed["t"]

    def noise(self, shape):
        return self.fixed["eps"]

    def bernoulli(self, n, p):
        return self.fixed["coins"]

    def uniform(self, shape):
        return self.fixed["uniform"]

    def other_labels(self, c):
        return self.fixed["other"]


def fixed_batch(batch: int = 6, num_classes: int | None = 4, seed: int = 1) -> dict:
    """Fixed tensors for a :class:`FixedContext`: timesteps include tiny σ_t (t = 0) and pure noise (t = 999)."""
    g = torch.Generator().manual_seed(seed)
    labels = (lambda: torch.randint(0, num_classes, (batch,), generator=g)) if num_classes else (lambda: None)
    t = torch.randint(0, 1000, (batch,), generator=g)
    t[0], t[-1] = 0, 999
    return dict(x=torch.rand(batch, 1, 8, 8, generator=g) * 2 - 1, c_x=labels(),
                a=torch.rand(batch, 1, 8, 8, generator=g) * 2 - 1, c_a=labels(), t=t,
                eps=torch.randn(batch, 1, 8, 8, generator=g), coins=torch.rand(batch, generator=g) < 0.5,
                uniform=torch.rand(batch, 1, 8, 8, generator=g), other=labels())


def gamma_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """γ_t and σ_t computed directly from the linear β schedule (independent of NoiseSchedule; ᾱ in float32
    like diffusers, whose rounding matters at t = 0 where σ_t = 0.01)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    alpha_bar = torch.cumprod(1 - betas, 0).double()
    return alpha_bar[t].sqrt().float().view(-1, 1, 1, 1), (1 - alpha_bar[t]).sqrt().float().view(-1, 1, 1, 1)


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error, written out."""
    return torch.stack([((p - q) ** 2).mean() for p, q in zip(prediction, target)])


def run(checkpoint, split, method: str, spec: ForgetSpec, steps: int = 3, params: dict | None = None, **loop):
    """A few real unlearning steps; returns ``(new checkpoint, report)``."""
    config = UnlearnConfig(steps=steps, **{**FAST, **loop})
    return unlearn(checkpoint, method, spec, config, params or {}, data=split)


def changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]


def check_basics(checkpoint, split, method: str, spec: ForgetSpec, params: dict | None = None) -> tuple:
    """Finite figures, weights that changed, a lineage entry naming method, forget spec and steps."""
    from unlearnctl.methods import get_method

    model, report = run(checkpoint, split, method, spec, steps=3, params=params)
    assert report["steps_run"] == 3 and report["stopped"] == "completed"
    assert report["history"] and all(torch.isfinite(torch.tensor(v)) for row in report["history"] for v in row.values())
    assert changed(checkpoint.state_dict, model.state_dict), "no weight changed"
    entry = model.lineage[-1]
    assert entry["command"] == "unlearn" and entry["method"] == method and entry["steps_run"] == 3
    assert entry["forget"]["fingerprint"] and entry["forget"]["spec"] == spec.to_dict()
    assert entry["parent_sha256"] == checkpoint.sha256
    config_cls = get_method(method).Config
    assert config_cls.from_dict(config_cls(**(params or {})).to_dict()) == config_cls(**(params or {}))
    assert entry["params"]["method_params"] == config_cls(**(params or {})).to_dict()
    return model, report


def make_state(method: str, seed: int = 0, ema_decay: float = 0.0, **params) -> UnlearnState:
    """A real context on random data (4 classes, 8 forget images) with :class:`StubUNet`, prepared."""
    from unlearnctl.methods import get_method
    from unlearnctl.training import EMA

    g = torch.Generator().manual_seed(0)  # the same data for every seed
    data = ImageSet(torch.rand(40, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 4, (40,), generator=g))
    forget = ImageSet(data.images[:8], data.labels[:8])
    retain = ImageSet(data.images[8:], data.labels[8:])
    checkpoint = FakeCheckpoint(num_classes=4)
    forget_set = ForgetSet("data", torch.zeros(40, dtype=torch.bool), forget, retain, [], ForgetSpec(indices=tuple(range(8))))
    ctx = MethodContext(denoiser=denoiser_of(StubUNet(), checkpoint), checkpoint=checkpoint,
                        forget_set=forget_set, retain=retain, forget=forget, batch_size=8, label_dropout=0.1,
                        generator=torch.Generator().manual_seed(seed))
    cls = get_method(method)
    runner = cls(cls.Config(**params), ctx)
    runner.prepare()
    ema = EMA(ctx.unet, ema_decay) if ema_decay > 0 else None
    return UnlearnState(runner, torch.optim.AdamW(ctx.parameters(), lr=1e-2, weight_decay=0.0), ctx.generator, ema)
