"""What every unlearning method shares: its config base, the context it runs in, its step output.

A method is essentially its loss. Each one lives in its own file with

* a ``@dataclass`` config of its own parameters (subclass of :class:`MethodConfig`; every field made with
  :func:`param` so the CLI gets an option with help text from it),
* a class (subclass of :class:`Method`) registered by name, whose docstring cites the paper and equation.

The method contract (every hook declared on :class:`Method`):

==========================  =================================================================================
hook                        what it does
==========================  =================================================================================
``prepare(progress)``       per-run set-up before the first step (saliency mask, the constant C, alternative
                            data); returns values for the lineage. All per-run state is made here.
``terms()``                 **required** — the step's loss terms (scalars with a graph) by their paper names,
                            plus diagnostics (e.g. SISS's mean weights)
``objective(terms)``        the scalar whose gradient is the update (e.g. ``L_r + β·L_mem``)
``combine(terms)``          gradient surgery (SISS's norm scaling, EraseDiff's λ): the update from per-term
                            gradients; the default is ``∇ objective(terms)``
``stop_reason(figures)``    a reason to stop before applying the step (NegGrad's divergence guard)
``state_dict`` / ``load``   the per-run state a resumed run needs
==========================  =================================================================================

The shared loop in :mod:`unlearnctl.unlearning` owns the optimizer, the RNG, the reduction of figures over
processes (once), clipping, finiteness checks and probes; a method only forms the step's gradient. It sees
the model through :attr:`MethodContext.denoiser` (:mod:`unlearnctl.denoisers`): noise targets written with
the paper's symbols become the right targets for ε-, v- and x₀-prediction models alike.

Torch is imported inside function bodies in this package: the CLI builds ``unlearn``'s options from these
configs, and ``unlearnctl --help`` must not pay for importing torch.
"""

from __future__ import annotations

import functools
import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from unlearnctl.errors import BadInputError, require

if TYPE_CHECKING:
    import torch

    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import ForgetSet, ImageSet
    from unlearnctl.denoisers import Denoiser
    from unlearnctl.diffusion import NoiseSchedule
    from unlearnctl.progress import ProgressFn
    from unlearnctl.runtime import Runtime


def param(default: Any, help: str, flag: str | None = None) -> Any:
    """A config field with the help text its CLI option shows (``flag`` defaults to ``--name-with-dashes``)."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass
class MethodConfig:
    """Base of the per-method configs: (de)serialisation and field descriptions for the CLI."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, params: dict[str, Any], method: str = "") -> "MethodConfig":
        """Build from ``{name: value}``; unknown names raise :class:`BadInputError` listing the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(names))
        if unknown:
            valid = ", ".join(names) or "none"
            raise BadInputError(f"{unknown[0]!r} is not a parameter of method {method or cls.__name__}; its parameters are: {valid}")
        return cls(**params)

    @classmethod
    def options(cls) -> list["ParamInfo"]:
        """One :class:`ParamInfo` per field (name, type, default, help, CLI flag)."""
        hints = typing.get_type_hints(cls)
        infos = []
        for f in fields(cls):
            default = f.default if f.default is not MISSING else None
            flag = f.metadata.get("flag") or "--" + f.name.strip("_").replace("_", "-")
            infos.append(ParamInfo(f.name, _base_type(hints[f.name]), default, f.metadata.get("help", ""), flag))
        return infos


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: type
    default: Any
    help: str
    flag: str


def _base_type(hint: Any) -> type:
    """``float | None`` → ``float``; plain types unchanged."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


@dataclass
class StepOutput:
    """What one unlearning step computed (plain floats: for progress, the finiteness check and the report).

    Attributes:
        loss: value of the objective whose gradient the step formed.
        terms: the loss terms by name, e.g. ``{"retain": 0.05, "forget": 0.08}``.
        grad_norms: gradient norms before the loop's total-norm clip, e.g. ``{"g_x": 1.2, "g_a": 0.3}``.
        stop: a reason to stop *before* applying this step (NegGrad's divergence guard); ``None`` = go on.
    """

    loss: float
    terms: dict[str, float] = field(default_factory=dict)
    grad_norms: dict[str, float] = field(default_factory=dict)
    stop: str | None = None

    def values(self) -> dict[str, float]:
        """Every figure of the step in one flat dict (progress bars, finiteness check)."""
        return {"loss": self.loss, **self.terms, **{f"|{k}|": v for k, v in self.grad_norms.items()}}

    def non_finite(self) -> list[str]:
        return [name for name, value in self.values().items() if not math.isfinite(value)]


@dataclass
class Update:
    """The gradient a step applies (aligned with the trainable parameters), the value of the objective it is
    the gradient of, gradient norms worth reporting, and figures the combination chose (EraseDiff's λ)."""

    grads: list["torch.Tensor"]
    loss: "torch.Tensor | float"
    grad_norms: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class MethodContext:
    """Everything a method may use. Built by :func:`unlearnctl.unlearning.unlearn`.

    Attributes:
        denoiser: the model being unlearned (:mod:`unlearnctl.denoisers`); trained in place. At
            :meth:`Method.prepare` it still holds the base weights.
        checkpoint: the base checkpoint (configs, data description, lineage).
        forget_set: the resolved forget specification.
        retain: D_r, the retained training images (labels kept).
        forget: D_f, the images to forget; labels of images from a file (−1) mapped to the null class on
            conditional models, labels dropped on unconditional ones.
        prompts: text-to-image models: the run's prompt table (every caption of D_r and D_f, once). There the
            "labels" of D_r and D_f are prompt ids into it, the null class is the empty prompt (id
            ``len(prompts)``), and a random other label is a random prompt of D_r that no image of D_f has.
        batch_size: images per batch drawn from each of D_r and D_f.
        label_dropout: share of retain labels replaced by the null class (conditional models with one), so
            the unconditional branch used by classifier-free guidance stays trained.
        generator: the run's one RNG (batches, timesteps, noise, label dropout, mixture draws). Methods
            draw randomness only through this context's methods, so tests can replace them with fixed tensors.
    """

    denoiser: "Denoiser"
    checkpoint: "Checkpoint"
    forget_set: "ForgetSet"
    retain: "ImageSet"
    forget: "ImageSet"
    batch_size: int
    label_dropout: float
    generator: "torch.Generator"
    prompts: list[str] | None = None

    @property
    def unet(self) -> "torch.nn.Module":
        """The network being trained."""
        return self.denoiser.network

    @property
    def schedule(self) -> "NoiseSchedule":
        return self.denoiser.schedule

    @property
    def runtime(self) -> "Runtime":
        return self.denoiser.runtime

    @property
    def device(self) -> "torch.device":
        return self.runtime.device or next(self.unet.parameters()).device

    @property
    def conditional(self) -> bool:
        """Whether images carry a condition (a class, or a prompt id on text-to-image models)."""
        return self.prompts is not None or self.checkpoint.conditional

    @property
    def null_class(self) -> int | None:
        return len(self.prompts) if self.prompts is not None else self.checkpoint.null_class

    @property
    def num_classes(self) -> int:
        """Real classes (the null class excluded); prompts of the table on text-to-image models."""
        return len(self.prompts) if self.prompts is not None else self.checkpoint.num_classes

    @property
    def n(self) -> int:
        """n = |D| = |D_r| + |D_f|."""
        return len(self.retain) + len(self.forget)

    @property
    def k(self) -> int:
        """k = |D_f|."""
        return len(self.forget)

    def parameters(self) -> list["torch.Tensor"]:
        return self.denoiser.parameters()

    # Every draw below takes sizes as the method sees them (this process's rows). In a multi-process run
    # (the runtime's shard) it draws the whole global batch's randomness and keeps this process's slice,
    # so the processes together see exactly the batch of a single-process run.

    def _global(self, draw, n: int, *shape: int) -> "torch.Tensor":
        """``draw(global_size, *shape)`` from the run's generator, this process's rows kept."""
        return self.runtime.take(draw(self.runtime.global_size(n), *shape))

    def _draw(self, images: "ImageSet", batch_size: int | None, drop: bool = False) -> tuple["torch.Tensor", "torch.Tensor | None", "torch.Tensor"]:
        import torch

        from unlearnctl.training import drop_labels

        size = self.runtime.global_size(batch_size) if batch_size else self.batch_size
        index = torch.randint(0, len(images), (size,), generator=self.generator)
        labels = images.labels[index] if (self.conditional and images.labels is not None) else None
        if labels is not None and drop and self.label_dropout > 0 and self.null_class is not None:
            labels = drop_labels(labels, self.null_class, self.label_dropout, self.generator)
        index, labels = self.runtime.take(index), self.runtime.take(labels)
        return self.encode(images.images[index]), labels, index

    def encode(self, images: "torch.Tensor") -> "torch.Tensor":
        """Images (``[B, C, H, W]`` in [-1, 1]) in the space the diffusion runs in, on the model's device
        (the identity for pixel models; VAE latents for latent ones)."""
        return self.denoiser.encode(images.to(self.device))

    def retain_batch(self, batch_size: int | None = None, drop_labels: bool = True) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        """x ~ D_r (``[B, C, H, W]``) and its labels c_x (``[B]``; a share dropped to the null class)."""
        x, c_x, _ = self._draw(self.retain, batch_size, drop=drop_labels)
        return x, c_x

    def forget_batch(self, batch_size: int | None = None) -> tuple["torch.Tensor", "torch.Tensor | None", "torch.Tensor"]:
        """a ~ D_f (``[B, C, H, W]``), its labels c_a (``[B]`` or ``None``) and the indices drawn into D_f."""
        return self._draw(self.forget, batch_size)

    def forget_conditions(self) -> "torch.Tensor":
        """The conditions c_a of a batch of D_f, without its images (ESD needs only the concept's prompts)."""
        import torch

        index = self.runtime.take(torch.randint(0, len(self.forget), (self.batch_size,), generator=self.generator))
        return self.forget.labels[index]

    def timesteps(self, batch_size: int) -> "torch.Tensor":
        return self._global(lambda n: self.schedule.random_timesteps(n, self.generator), batch_size)

    def noise(self, shape: "torch.Size") -> "torch.Tensor":
        import torch

        return self._global(lambda n, *rest: torch.randn((n, *rest), generator=self.generator), *shape).to(self.device)

    def uniform(self, shape: "torch.Size") -> "torch.Tensor":
        """U[0, 1) noise of ``shape`` on the model's device."""
        import torch

        return self._global(lambda n, *rest: torch.rand((n, *rest), generator=self.generator), *shape).to(self.device)

    def bernoulli(self, n: int, p: float) -> "torch.Tensor":
        """``n`` independent coins, True with probability ``p`` (bool ``[n]`` on the model's device)."""
        import torch

        return self._global(lambda size: torch.rand(size, generator=self.generator) < p, n).to(self.device)

    def randint(self, high: int, n: int) -> "torch.Tensor":
        """``n`` integers uniform in ``[0, high)`` (CPU)."""
        import torch

        return self._global(lambda size: torch.randint(0, high, (size,), generator=self.generator), n)

    def coefficients(self, t: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """γ_t, σ_t shaped ``[B, 1, 1, 1]`` on the model's device."""
        return self.denoiser.coefficients(t, self.device)

    def other_labels(self, c: "torch.Tensor") -> "torch.Tensor":
        """A uniformly random real class different from each entry of ``c`` (any real class for the null class);
        on text-to-image models a random other prompt (:meth:`other_prompts`)."""
        import torch

        if self.prompts is not None:
            return self.other_prompts(c)
        require(self.num_classes >= 2, "a random other class needs at least two classes")
        is_null = c >= self.num_classes  # the null class (conditional models with one)
        shift = self._global(lambda size: torch.randint(1, self.num_classes, (size,), generator=self.generator), c.shape[0]).to(c.device)
        other = (c.clamp(max=self.num_classes - 1) + shift) % self.num_classes  # never equals c for real classes
        anyone = self._global(lambda size: torch.randint(0, self.num_classes, (size,), generator=self.generator), c.shape[0]).to(c.device)
        return torch.where(is_null, anyone, other)

    @functools.cached_property
    def retained_prompt_ids(self) -> "torch.Tensor":
        """Ids of the prompts of D_r that caption no image of D_f (sorted; computed once per run)."""
        import torch

        retained = torch.unique(self.retain.labels)
        return retained[~torch.isin(retained, torch.unique(self.forget.labels))]

    def other_prompts(self, c: "torch.Tensor") -> "torch.Tensor":
        """For each prompt id of ``c``, a uniformly random retained prompt (:meth:`retained_prompt_ids`) other than it."""
        import torch

        pool = self.retained_prompt_ids  # [P_r]
        require(len(pool) >= 2, "a random other prompt needs at least two retained prompts (captions no forgotten image has)")
        position = torch.searchsorted(pool, c.cpu().clamp(max=int(pool[-1])))  # where c sits in the pool ...
        in_pool = pool[position.clamp(max=len(pool) - 1)] == c.cpu()  # ... if it is there
        shift = self._global(lambda size: torch.randint(1, len(pool), (size,), generator=self.generator), c.shape[0])
        anyone = self._global(lambda size: torch.randint(0, len(pool), (size,), generator=self.generator), c.shape[0])
        return pool[torch.where(in_pool, (position + shift) % len(pool), anyone)].to(c.device)

    def generate(self, conditions: "torch.Tensor", steps: int = 50, seed: int = 0, progress: "ProgressFn" = None) -> "torch.Tensor":
        """Images (``[N, C, H, W]`` in [-1, 1]) the model being trained draws for ``conditions`` (class ids, or
        prompt ids on text-to-image models), DDIM without guidance."""
        from unlearnctl.diffusion import sample_images, sample_text_images

        self.unet.eval()
        try:
            if self.prompts is not None:
                embeddings = self.denoiser.embeddings(conditions)
                return sample_text_images(self.denoiser, self.checkpoint.components, embeddings, steps=steps, sampler="ddim",
                                          guidance=1.0, seed=seed, progress=progress)
            return sample_images(self.unet, self.checkpoint.scheduler_config, labels=conditions, null_class=self.null_class,
                                 steps=steps, seed=seed, progress=progress, precision=self.runtime.precision)
        finally:
            self.unet.train()


class Method:
    """Base of every unlearning method (the contract is in the module docstring).

    Subclasses set ``name`` (by :func:`~unlearnctl.methods.register_method`), ``Config``, ``summary``,
    ``defaults`` (the tuned ``steps``, ``lr``, ``batch_size``, ``lr_schedule`` and ``ema_decay`` of the shared
    loop), ``scenarios`` (the kinds of experiment scenario whose ``methods = "all"`` lists it) and ``models``
    (the model families it runs on, and so the scenarios an experiment file may name it in), and implement
    :meth:`terms` plus :meth:`objective` or :meth:`combine`. An exact method (``exact = True``, retraining)
    implements :meth:`run` instead of the loop hooks.

    Scenario kinds (:func:`~unlearnctl.methods.available_methods`, docs/experiments.md):

    * ``"class"`` — a pixel model forgets a class;
    * ``"canary"`` — a model forgets training data: images by index, the canary, images from a file;
    * ``"concept"`` — a text-to-image model forgets a concept: a class of its captioned data, or prompts.

    The default, ``("class", "concept")``, suits a method that forgets a class of any model; a method made for
    text-to-image models only (ESD) says ``("concept",)``.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {"steps": 300, "lr": 1e-4, "batch_size": 64, "lr_schedule": "cosine", "ema_decay": 0.0}
    exact: ClassVar[bool] = False  # True: not a fine-tuning method (retrain trains from scratch)
    order: ClassVar[int] = 100  # position in listings (--help, the demo); ties by name
    scenarios: ClassVar[tuple[str, ...]] = ("class", "concept")  # the scenario kinds it takes part in (class docstring)
    models: ClassVar[tuple[str, ...]] = ("pixel", "text-to-image")  # the model families it runs on

    def __init__(self, config: MethodConfig, ctx: MethodContext):
        self.config, self.ctx = config, ctx
        self.check()

    # ----- hooks

    @classmethod
    def check_model(cls, checkpoint: "Checkpoint") -> None:
        """Refuse a model the method cannot run on, before any data is read (raise :class:`BadInputError`)."""

    def check(self) -> None:
        """Refuse a model/forget-set combination the method cannot handle (raise :class:`BadInputError`)."""

    def prepare(self, progress: "ProgressFn" = None) -> dict[str, Any]:
        """One-time set-up before the first step (saliency mask, automatic scaling, alternative data).

        Returns values worth recording in the lineage (e.g. an automatically chosen constant).
        """
        return {}

    def terms(self) -> dict[str, "torch.Tensor"]:
        """The step's loss terms (scalars with a graph) and diagnostics, by their paper names."""
        raise NotImplementedError

    def objective(self, terms: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        """The scalar whose gradient is the update."""
        raise NotImplementedError

    def combine(self, terms: dict[str, "torch.Tensor"]) -> Update:
        """The update from the terms; by default ``∇ objective(terms)``. Gradient surgery overrides this."""
        total = self.objective(terms)
        grads = self.gradient(total)
        return Update(grads, total, {"g": float(norm(grads))})

    def stop_reason(self, figures: StepOutput) -> str | None:
        """A reason to stop before applying this step (figures are the global batch's); ``None`` = go on."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Method state a resumed run needs (masks, chosen constants)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def run(self, job: Any) -> tuple[dict[str, "torch.Tensor"], Any]:
        """Exact methods only: produce the weights without the fine-tuning loop (see ``methods/retrain.py``)."""
        raise NotImplementedError(f"{self.name} is a fine-tuning method: the shared loop runs it")

    # ----- the step, built from the hooks

    def step(self) -> StepOutput:
        """Fill ``p.grad`` of every trainable parameter with the step's gradient (no clipping, no reduction of
        the figures over processes: both are the loop's)."""
        terms = self.terms()
        update = self.combine(terms)
        set_gradients(self.ctx.parameters(), update.grads)
        figures = {**{k: float(v.detach()) for k, v in terms.items()}, **update.figures}
        loss = update.loss.detach() if hasattr(update.loss, "detach") else update.loss  # a 0-d tensor or a float
        return StepOutput(float(loss), figures, update.grad_norms)

    def loss(self) -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]:
        """``(objective, terms)`` of one draw (tests, notebooks)."""
        terms = self.terms()
        return self.objective(terms), terms

    def gradient(self, loss: "torch.Tensor", retain_graph: bool = False,
                 params: list["torch.Tensor"] | None = None) -> list["torch.Tensor"]:
        """∇ loss over the trainable parameters (or ``params``), averaged over processes by the runtime."""
        return self.ctx.runtime.gradients(loss, self.ctx.parameters() if params is None else params, retain_graph)

    # ----- shared loss pieces

    def predict(self, m_t: "torch.Tensor", t: "torch.Tensor", c: "torch.Tensor | None") -> "torch.Tensor":
        """ε_θ(m_t, t, c): the network's output (in the model's own parameterisation)."""
        return self.ctx.denoiser.predict(m_t, t, c)

    def target(self, t: "torch.Tensor", **given: "torch.Tensor") -> "torch.Tensor":
        """The loss target for ``m_t = γ_t x₀ + σ_t ε`` given two of ``m_t``, ``x0``, ``eps``."""
        return self.ctx.denoiser.target(t, **given)

    def denoising_loss(self, x: "torch.Tensor", c: "torch.Tensor | None") -> "torch.Tensor":
        """The DDPM loss per sample, ``||ε_θ(m_t, t, c) − ε||²`` with ``m_t = γ_t x + σ_t ε`` (shape ``[B]``)."""
        from unlearnctl.diffusion import per_sample_mse

        t = self.ctx.timesteps(x.shape[0])  # [B]
        eps = self.ctx.noise(x.shape)  # [B, C, H, W]
        m_t = self.ctx.denoiser.add_noise(x, eps, t)  # [B, C, H, W]
        return per_sample_mse(self.predict(m_t, t, c), self.target(t, x0=x, eps=eps))

    def retain_loss(self) -> "torch.Tensor":
        """L_r: the denoising loss on a batch of D_r (labels with dropout to the null class)."""
        x, c_x = self.ctx.retain_batch()
        return self.denoising_loss(x, c_x).mean()

    def forget_loss(self) -> "torch.Tensor":
        """L_f: the ordinary denoising loss on a batch of D_f under the forget labels."""
        a, c_a, _ = self.ctx.forget_batch()
        return self.denoising_loss(a, c_a).mean()


# --------------------------------------------------------------------------------------------- gradient tools


def gradient(loss: "torch.Tensor", params: list["torch.Tensor"], retain_graph: bool = False) -> list["torch.Tensor"]:
    """∇_θ loss as a list aligned with ``params`` (zeros where the loss does not depend on a parameter),
    single process, fp32 (methods use :meth:`Method.gradient`, which goes through the run's runtime)."""
    from unlearnctl.runtime import Runtime

    return Runtime().gradients(loss, params, retain_graph)


def norm(grads: list["torch.Tensor"]) -> "torch.Tensor":
    """‖g‖₂ over all tensors of ``grads``."""
    import torch

    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))  # one fused kernel over all tensors


def dot(a: list["torch.Tensor"], b: list["torch.Tensor"]) -> "torch.Tensor":
    """⟨a, b⟩ over all tensors."""
    import torch

    return torch.stack([(x * y).sum() for x, y in zip(a, b)]).sum()


def set_gradients(params: list["torch.Tensor"], grads: list["torch.Tensor"]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.detach().clone()
