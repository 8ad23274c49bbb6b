"""The unlearning loop and its Python API (``unlearnctl unlearn``).

::

    from unlearnctl.checkpoint import load_checkpoint, save_checkpoint
    from unlearnctl.data import ForgetSpec
    from unlearnctl.unlearning import UnlearnConfig, unlearn

    base = load_checkpoint("base.safetensors")
    model, report = unlearn(base, "siss", ForgetSpec(classes=("8",)), UnlearnConfig(seed=0), {"lambda_": 0.5})
    save_checkpoint(model, "siss.safetensors")

A run is an :class:`UnlearnJob` (what it is given) and a :class:`RunRecord` (what happened: it yields the
lineage entry and the report). The loop is the same for every fine-tuning method: draw nothing itself, ask
the method for a gradient (:meth:`~unlearnctl.methods.base.Method.step`), average the step's figures over
the processes, check every figure is finite, clip the total norm, take an
AdamW step (no weight decay; learning rate constant as in the SISS reference or decaying on a cosine, per
method), optionally update an EMA of the weights, optionally probe the forget rate by sampling. Everything
that changes during a run — step counter, optimizer, EMA, RNG, method state — lives in one
:class:`UnlearnState`, so checkpointing and resuming a run is a matter of saving and loading its ``state_dict``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from unlearnctl.errors import NonFiniteFailure, require
from unlearnctl.progress import ProgressFn, report
from unlearnctl.training import EMA, LR_SCHEDULES, lr_factor

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import DataSplit, ForgetSet, ForgetSpec
    from unlearnctl.methods.base import Method, MethodConfig, StepOutput
    from unlearnctl.resume import Checkpointer, ResumeOptions

DEFAULT_PROBE_EVERY = 10  # probe interval used by --until-forget-rate when --probe-every is not given
STOP_RULES = ("rate", "upper")  # --until-forget-rate stops when the probe's rate / its 95% Wilson upper bound <= target


@dataclass
class UnlearnConfig:
    """Settings of the shared loop (the method's own parameters live in its config)."""

    steps: int | None = None  # optimizer steps (None: the method's tuned default)
    lr: float | None = None  # AdamW learning rate, constant (None: the method's tuned default)
    batch_size: int | None = None  # images drawn from each of the retain and forget sets per step (None: method's)
    seed: int = 0  # seeds batches, timesteps, noise, label dropout, mixture draws and probe samples
    grad_clip: float = 1.0  # total gradient-norm clip after the method formed its gradient (SISS reference: 1.0)
    lr_schedule: str | None = None  # "cosine" (from lr down to 10% of it) or "constant" (None: the method's tuned default)
    ema_decay: float | None = None  # EMA of the weights over the run, saved and probed; 0 = off (None: the method's)
    label_dropout: float = 0.1  # conditional models: share of retain labels replaced by the null class
    probe_every: int = 0  # sample and measure the forget rate every N steps (0 = never; see DEFAULT_PROBE_EVERY)
    until_forget_rate: float | None = None  # stop at the first probe meeting stop_on's rule for this target
    stop_on: str = "rate"  # "rate": the probe's forget rate <= target; "upper": its 95% Wilson upper bound <= target
    probe_samples: int = 200  # forget-condition images per probe: Wilson half-width <= 0.07 at any rate (0.03 at 0.05)
    probe_steps: int = 25  # DDIM steps per probe image
    device: str = "auto"  # auto (CUDA if present), cpu, cuda, ...
    precision: str = "fp32"  # forward passes: fp32, bf16 (autocast) or fp16 (CUDA, loss-scaled)
    # text-to-image models only
    trainable: str | None = None  # UNet parameters trained: all, cross-attention (ESD-x), non-cross-attention (ESD-u); None: the method's
    prompt_samples: int = 50  # images the base draws per --forget-prompt for D_f
    prompt_guidance: float = 3.0  # their classifier-free guidance scale

    def __post_init__(self):
        from unlearnctl.distributed import check_precision

        require(self.steps is None or self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        check_precision(self.precision)
        require(self.lr is None or 0 < self.lr <= 1, f"learning rate must be in (0, 1], got {self.lr}")
        require(self.batch_size is None or self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        require(self.grad_clip > 0, f"gradient clip must be > 0, got {self.grad_clip}")
        require(self.lr_schedule in (None, *LR_SCHEDULES),
                f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        require(self.ema_decay is None or 0 <= self.ema_decay < 1, f"EMA decay must be in [0, 1), got {self.ema_decay}")
        require(0 <= self.label_dropout < 1, f"label dropout must be in [0, 1), got {self.label_dropout}")
        require(self.probe_every >= 0, f"probe interval must be >= 0, got {self.probe_every}")
        require(self.until_forget_rate is None or 0 <= self.until_forget_rate <= 1,
                f"target forget rate must be in [0, 1], got {self.until_forget_rate}")
        require(self.stop_on in STOP_RULES, f"stop rule must be one of {', '.join(STOP_RULES)}, got {self.stop_on!r}")
        require(self.probe_samples >= 1, f"probe samples must be at least 1, got {self.probe_samples}")
        require(self.probe_steps >= 1, f"probe steps must be at least 1, got {self.probe_steps}")
        require(self.prompt_samples >= 0, f"prompt samples must be >= 0, got {self.prompt_samples}")
        require(self.prompt_guidance >= 1, f"prompt guidance must be at least 1 (1 = none), got {self.prompt_guidance}")

    def with_defaults(self, defaults: dict[str, Any]) -> "UnlearnConfig":
        """This config with every ``None`` loop setting taken from a method's tuned ``defaults``."""
        from dataclasses import replace

        names = ("steps", "lr", "batch_size", "lr_schedule", "ema_decay")
        if self.trainable is None and "trainable" in defaults:  # text-to-image methods that choose their layers (ESD)
            names += ("trainable",)
        return replace(self, **{name: defaults[name] for name in names if getattr(self, name) is None})

    @property
    def probe_interval(self) -> int:
        if self.probe_every:
            return self.probe_every
        return DEFAULT_PROBE_EVERY if self.until_forget_rate is not None else 0


@dataclass
class UnlearnState:
    """Everything a run changes: what ``--checkpoint-every`` would save and ``--resume`` load."""

    method: "Method"
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    ema: EMA | None = None  # the EMA of the weights (--ema-decay); what is saved and probed when on
    step: int = 0
    stopped: str = "completed"  # why the loop ended
    probes: list[dict[str, Any]] = field(default_factory=list)  # [{"step", "forget_rate", its count, n and interval}]
    history: list[dict[str, float]] = field(default_factory=list)  # one dict of step figures per step

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "stopped": self.stopped, "probes": self.probes, "history": self.history,
            "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
            "method": self.method.state_dict(), "weights": self.method.ctx.unet.state_dict(),
            "ema": None if self.ema is None else {"shadow": self.ema.shadow, "updates": self.ema.updates},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.ctx.unet.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.method.load_state_dict(state["method"])
        self.step, self.stopped = int(state["step"]), state["stopped"]
        self.probes, self.history = list(state["probes"]), list(state["history"])
        require((state.get("ema") is None) == (self.ema is None), "EMA on in one run and off in the other")
        if self.ema is not None:
            self.ema.load(state["ema"]["shadow"], int(state["ema"]["updates"]))

    def result_weights(self) -> dict[str, torch.Tensor]:
        """The weights the run produces: the EMA's when on, else the model's."""
        return self.ema.shadow if self.ema is not None else self.method.ctx.unet.state_dict()


# --------------------------------------------------------------------------------------------- the run record


@dataclass
class UnlearnJob:
    """What one run is given: the base, the method and its config, the data, the forget set, the loop settings
    (the method's tuned defaults filled in), and where progress and resumable states go."""

    checkpoint: "Checkpoint"
    method: str
    method_config: "MethodConfig"
    split: "DataSplit"
    forget_set: "ForgetSet"
    config: UnlearnConfig
    progress: ProgressFn = None
    resume: "ResumeOptions | None" = None

    def loop_settings(self) -> dict[str, Any]:
        """The loop settings that determine the result (lineage, resume key)."""
        c = self.config
        settings = {"steps": c.steps, "lr": c.lr, "batch_size": c.batch_size, "grad_clip": c.grad_clip,
                    "lr_schedule": c.lr_schedule, "ema_decay": c.ema_decay, "label_dropout": c.label_dropout,
                    "probe_every": c.probe_interval, "until_forget_rate": c.until_forget_rate, "stop_on": c.stop_on,
                    "probe_samples": c.probe_samples, "probe_steps": c.probe_steps}
        if self.checkpoint.text_conditional:
            settings.update(trainable=c.trainable or "all", prompt_samples=c.prompt_samples, prompt_guidance=c.prompt_guidance)
        return settings

    def resume_key(self) -> dict[str, Any]:
        """The parameters a resumable state is tied to; ``--resume`` refuses a run whose key differs."""
        from unlearnctl.checkpoint import weights_sha256

        return {"method": self.method, "method_params": self.method_config.to_dict(), **self.loop_settings(),
                "seed": self.config.seed, "base_weights_sha256": weights_sha256(self.checkpoint.state_dict),
                "data_fingerprint": self.split.description["fingerprint"], "forget_fingerprint": self.forget_set.fingerprint}


@dataclass
class RunRecord:
    """One unlearning run, typed. Yields the lineage entry (:meth:`lineage_entry`), the run report
    (:meth:`report`) and, through its job, the resume key — each written once, here.

    Attributes:
        job: what the run was given.
        command: the lineage command (``unlearn``; ``retrain`` for exact retraining).
        params: the lineage parameters; by default the method's parameters, what ``prepare`` chose and the
            loop settings (:meth:`fine_tuning_params`).
        steps, lr, batch_size: the loop's actual settings (retrain: its recipe's).
        data_fingerprint: fingerprint of the data the result was trained on.
        extra: further report fields (retrain: its ``train`` recipe).
    """

    job: UnlearnJob
    command: str = "unlearn"
    params: dict[str, Any] = field(default_factory=dict)
    prepared: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    data_fingerprint: str | None = None
    steps_run: int = 0
    stopped: str = "completed"
    wall_time_s: float = 0.0
    probe_time_s: float = 0.0
    probes: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    until: dict[str, Any] | None = None  # --until-forget-rate: where and why it stopped (:func:`until_record`)
    changed: dict[str, Any] = field(default_factory=dict)  # checkpoint fields besides the weights the run replaced

    def __post_init__(self):
        c = self.job.config
        self.steps = c.steps if self.steps is None else self.steps
        self.lr = c.lr if self.lr is None else self.lr
        self.batch_size = c.batch_size if self.batch_size is None else self.batch_size
        self.data_fingerprint = self.data_fingerprint or self.job.split.description["fingerprint"]

    def fine_tuning_params(self) -> dict[str, Any]:
        """The lineage parameters of a fine-tuning run."""
        from unlearnctl import distributed

        job = self.job
        return {"method_params": job.method_config.to_dict(), "prepared": self.prepared, **job.loop_settings(),
                "data": job.split.description["source"], "precision": job.config.precision,
                "processes": distributed.world_size()}

    def lineage_entry(self) -> dict[str, Any]:
        from unlearnctl.checkpoint import lineage_entry

        params = self.params or self.fine_tuning_params()
        extra = {"until": self.until} if self.until is not None else {}
        return lineage_entry(self.command, params, self.job.config.seed, self.wall_time_s, method=self.job.method,
                             forget=self.job.forget_set.describe(), steps_run=self.steps_run, stopped=self.stopped,
                             data_fingerprint=self.data_fingerprint, **extra)

    def report(self) -> dict[str, Any]:
        """What ``unlearn`` prints with ``--json`` (``history``: one dict of step figures per step)."""
        job = self.job
        return {"method": job.method, "steps": self.steps, "steps_run": self.steps_run, "stopped": self.stopped,
                "lr": self.lr, "batch_size": self.batch_size, "method_params": job.method_config.to_dict(),
                "prepared": self.prepared, "forget": job.forget_set.describe(), "wall_time_s": self.wall_time_s,
                "probe_time_s": self.probe_time_s, "final": self.history[-1] if self.history else {},
                "probes": self.probes, "until": self.until, "history": self.history, **self.extra}


# --------------------------------------------------------------------------------------------- entry point


def unlearn(
    checkpoint: "Checkpoint",
    method: str,
    forget_spec: "ForgetSpec",
    config: UnlearnConfig | None = None,
    method_params: dict[str, Any] | None = None,
    data: "DataSplit | None" = None,
    progress: ProgressFn = None,
    resume: "ResumeOptions | None" = None,
) -> tuple["Checkpoint", dict[str, Any]]:
    """Make ``checkpoint`` forget ``forget_spec`` with ``method``; returns the new checkpoint and a report.

    Args:
        checkpoint: the base model.
        method: a registered method name (:func:`unlearnctl.methods.available_methods`).
        forget_spec: what to forget (classes, training-set indices, the canary, images from a file).
        config: the loop settings; ``None`` fields take the method's tuned defaults.
        method_params: the method's own parameters by config field name (e.g. ``{"lambda_": 0.5}``).
        data: the data split; default: reloaded from the checkpoint's recorded description (fingerprint checked).
        progress: callback receiving a :class:`~unlearnctl.progress.Progress` per step and per probe.
        resume: write a resumable state every N steps and/or continue from one (:mod:`unlearnctl.resume`).

    Raises:
        BadInputError: unknown method or parameter, data that does not fit the model, an empty forget set
            or one that is everything.
        NonFiniteFailure: a loss term, gradient norm or weight became NaN/Inf (nothing is returned, nothing
            written); its ``.checkpoint`` holds the last good weights when a finite copy exists.
    """
    from unlearnctl.data import check_compatible, load_recorded_data, resolve_forget
    from unlearnctl.integrity import require_finite_weights
    from unlearnctl.methods import get_method

    require_finite_weights(checkpoint.state_dict, checkpoint.path or "the model")  # broken input, not a learning rate
    config = config or UnlearnConfig()
    method_cls = get_method(method)
    method_cls.check_model(checkpoint)
    method_config = method_cls.Config.from_dict(dict(method_params or {}), method)
    split = data if data is not None else load_recorded_data(checkpoint.data)
    if not method_cls.exact:
        config = config.with_defaults(method_cls.defaults)
    if checkpoint.text_conditional:
        from unlearnctl.text_unlearning import text_forget_set

        split, forget_set = text_forget_set(checkpoint, forget_spec, split, prompt_samples=config.prompt_samples,
                                            prompt_guidance=config.prompt_guidance, seed=config.seed,
                                            device=config.device, progress=progress)
    else:
        require(not forget_spec.prompts, "--forget-prompt names a concept of a text-to-image model, and this model "
                "is not one; forget a class with --forget-class")
        require(config.trainable in (None, "all"), "--trainable applies to text-to-image models (a pixel model trains all its weights)")
        check_compatible(split.description, checkpoint.unet_config, checkpoint.conditional, checkpoint.num_classes)
        forget_set = resolve_forget(forget_spec, split)
    require(len(forget_set.retain) > 0, "nothing would be retained; retrain from scratch on other data instead")
    job = UnlearnJob(checkpoint, method, method_config, split, forget_set, config, progress, resume)
    if method_cls.exact:
        weights, record = method_cls(method_config, None).run(job)
    else:
        weights, record = fine_tune(job, method_cls)
    return checkpoint.derive(weights, record.lineage_entry(), **record.changed), record.report()


def fine_tune(job: UnlearnJob, method_cls: type["Method"]) -> tuple[dict[str, torch.Tensor], RunRecord]:
    """The shared fine-tuning run of every non-exact method: set up, prepare, loop, collect the weights."""
    from unlearnctl import distributed
    from unlearnctl.tensors import finite_or_none, first_nonfinite, to_device

    config = job.config
    state, probe = start_run(job, method_cls)
    record = RunRecord(job)
    checkpointer = job.resume.start("unlearn", job.resume_key(), config.steps) if job.resume is not None else None
    started = time.perf_counter()
    record.prepared = state.method.prepare(job.progress)
    if distributed.launched():  # every process starts from the main process's choices (C, masks, alternatives)
        state.method.load_state_dict(distributed.broadcast_state(state.method.state_dict()))
    saved = checkpointer.restore() if checkpointer is not None else None
    if saved is not None:
        _load_state(state, {**saved, "method": to_device(saved["method"], state.method.ctx.device)})
    try:
        run_loop(state, steps=config.steps, config=config, probe=probe, progress=job.progress, checkpointer=checkpointer)
    except NonFiniteFailure as exc:  # checked before the optimizer step: the weights in memory are the last good
        last_good = finite_or_none(state.result_weights())
        if last_good is not None:
            _finish(record, state, probe, started, stopped=str(exc))
            exc.checkpoint = job.checkpoint.derive(last_good, record.lineage_entry())
        raise
    _finish(record, state, probe, started)
    weights = {k: v.detach().cpu().clone() for k, v in state.result_weights().items()}
    bad = first_nonfinite(weights)
    if bad is not None:
        raise NonFiniteFailure(f"weights {bad} became non-finite; lower --lr", state.step)
    return weights, record


def start_run(job: UnlearnJob, method_cls: type["Method"]) -> tuple[UnlearnState, "ForgetProbe | None"]:
    """The method on its context and the run's state (optimizer, RNG, EMA), before ``prepare``."""
    from unlearnctl.denoisers import denoiser_for
    from unlearnctl.methods.base import MethodContext
    from unlearnctl.runtime import Runtime
    from unlearnctl.training import resolve_device

    config, checkpoint = job.config, job.checkpoint
    runtime = Runtime.create(resolve_device(config.device), config.precision, config.batch_size)
    denoiser = denoiser_for(checkpoint, runtime)
    denoiser.network.train()
    generator = torch.Generator().manual_seed(config.seed)
    prompts, retain, forget = None, job.forget_set.retain, _forget_images(job.forget_set, checkpoint)
    if checkpoint.text_conditional:
        from unlearnctl.denoisers.latent import select_trainable
        from unlearnctl.text_unlearning import with_prompt_ids

        prompts, retain, forget = with_prompt_ids(job.forget_set)
        denoiser.use_prompts(prompts)
        select_trainable(denoiser.network, config.trainable or "all")
    ctx = MethodContext(denoiser=denoiser, checkpoint=checkpoint, forget_set=job.forget_set, retain=retain,
                        forget=forget, batch_size=config.batch_size, label_dropout=config.label_dropout,
                        generator=generator, prompts=prompts)
    method = method_cls(job.method_config, ctx)
    optimizer = torch.optim.AdamW(ctx.parameters(), lr=config.lr, weight_decay=0.0)  # no decay: SalUn's frozen weights stay exact
    ema = EMA(denoiser.network, config.ema_decay) if config.ema_decay else None
    probe = ForgetProbe(checkpoint, job.forget_set, job.split, config, job.progress) if config.probe_interval else None
    return UnlearnState(method, optimizer, generator, ema), probe


def _finish(record: RunRecord, state: UnlearnState, probe: "ForgetProbe | None", started: float,
            stopped: str | None = None) -> None:
    record.steps_run, record.stopped = state.step, stopped or state.stopped
    record.probes, record.history = state.probes, state.history
    record.wall_time_s = time.perf_counter() - started
    record.probe_time_s = probe.seconds if probe else 0.0
    record.until = until_record(state, record.job.config)


def until_record(state: UnlearnState, config: UnlearnConfig) -> dict[str, Any] | None:
    """What ``--until-forget-rate`` did: the target and rule, whether a probe met it, and that probe (else the
    last one) — step, forget rate, count/n and 95% Wilson interval. ``None`` without a target."""
    if config.until_forget_rate is None:
        return None
    met = [p for p in state.probes if _meets_target(p, config)]
    probe = met[0] if met else (state.probes[-1] if state.probes else {})
    return {"target": config.until_forget_rate, "stop_on": config.stop_on, "reached": bool(met),
            "probe_samples": probe.get("forget_rate_n"), "probe_steps": config.probe_steps,
            **{k: v for k, v in probe.items() if k == "step" or k.startswith("forget_rate")}}


def _meets_target(probe: dict[str, Any], config: UnlearnConfig) -> bool:
    """The stop rule (``stop_on``): the point rate, or the upper end of its 95% Wilson interval, ``<=`` the target."""
    figure = probe["forget_rate"] if config.stop_on == "rate" else probe["forget_rate_ci95_high"]
    return figure <= config.until_forget_rate


def _forget_images(forget_set: "ForgetSet", checkpoint: "Checkpoint"):
    """D_f as the methods see it: labels −1 (images from a file, class unknown) → the null class on
    conditional models; no labels on unconditional ones."""
    from unlearnctl.data import NO_CLASS_FOR_FORGET_IMAGES, ImageSet

    forget = forget_set.forget
    if checkpoint.text_conditional:
        return forget  # labelled by prompt id when the run starts (:func:`~unlearnctl.text_unlearning.with_prompt_ids`)
    if not checkpoint.conditional or forget.labels is None:
        return ImageSet(forget.images, None, forget.class_names)
    unknown = forget.labels < 0
    if checkpoint.null_class is None:
        require(not bool(unknown.any()), NO_CLASS_FOR_FORGET_IMAGES)
        return forget
    labels = torch.where(unknown, torch.full_like(forget.labels, checkpoint.null_class), forget.labels)
    return ImageSet(forget.images, labels, forget.class_names)


def _load_state(state: UnlearnState, saved: dict[str, Any]) -> None:
    from unlearnctl.errors import BadInputError

    try:
        state.load_state_dict(saved)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise BadInputError(f"the resume state does not fit this run ({str(exc)[:120]}); start over without --resume") from None


def run_loop(state: UnlearnState, *, steps: int, config: UnlearnConfig, probe: "ForgetProbe | None" = None,
             progress: ProgressFn = None, checkpointer: "Checkpointer | None" = None) -> UnlearnState:
    """Run ``state`` up to ``steps`` optimizer steps (from ``state.step``: a loaded state resumes).

    One step: the method forms its gradient (:meth:`~unlearnctl.methods.base.Method.step`); the step's figures
    are averaged over the processes (here, once); a NaN/Inf figure stops the run; the method may stop it
    (:meth:`~unlearnctl.methods.base.Method.stop_reason`); the total norm is clipped; AdamW steps at the
    scheduled rate; the EMA follows. ``checkpointer`` writes the state every N steps (``--checkpoint-every``).
    """
    from unlearnctl.tensors import first_nonfinite

    runner = state.method
    runtime, params = runner.ctx.runtime, runner.ctx.parameters()
    peak_lrs = [group.setdefault("initial_lr", group["lr"]) for group in state.optimizer.param_groups]
    interval = config.probe_interval
    info: dict[str, float] = {}
    if probe is not None and state.step == 0 and not state.probes:
        info["forget_rate"] = _probe(state, probe, config, progress, steps)
    while state.step < steps and state.stopped == "completed":
        state.optimizer.zero_grad(set_to_none=True)
        out = runner.step()
        values = runtime.mean_floats([out.loss, *out.terms.values()])  # several processes: the global batch's figures
        out.loss, out.terms = values[0], dict(zip(out.terms, values[1:]))
        _check_finite(out, state.step)
        out.stop = runner.stop_reason(out)
        if out.stop:
            state.stopped = out.stop
            break
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        for group, peak in zip(state.optimizer.param_groups, peak_lrs):
            group["lr"] = peak * lr_factor(state.step, steps, config.lr_schedule or "constant")
        state.optimizer.step()
        bad = first_nonfinite(dict(runner.ctx.unet.named_parameters()))
        if bad is not None:
            raise NonFiniteFailure(f"weight {bad} became non-finite in step {state.step + 1}; lower --lr", state.step)
        if state.ema is not None:
            state.ema.update(runner.ctx.unet)
        state.step += 1
        state.history.append({"step": state.step, **out.values()})
        info.update(out.values())
        if probe is not None and state.step % interval == 0:
            info["forget_rate"] = _probe(state, probe, config, progress, steps)
        report(progress, "unlearn", state.step, steps, **info)
        if checkpointer is not None:
            checkpointer.maybe_save(state.step, state.state_dict)
    return state


def _probe(state: UnlearnState, probe: "ForgetProbe", config: UnlearnConfig, progress: ProgressFn, steps: int) -> float:
    unet = state.method.ctx.unet
    if state.ema is None:
        found = probe(unet)
    else:  # probe what the run would save
        own = {k: v.clone() for k, v in unet.state_dict().items()}
        unet.load_state_dict(state.ema.shadow)
        found = probe(unet)
        unet.load_state_dict(own)
    state.probes.append({"step": state.step, **found})
    rate, low, high = found["forget_rate"], found["forget_rate_ci95_low"], found["forget_rate_ci95_high"]
    report(progress, "probe", state.step, steps, forget_rate=rate, forget_rate_ci95_low=low, forget_rate_ci95_high=high)
    if config.until_forget_rate is not None and state.stopped == "completed" and _meets_target(found, config):
        figure = "forget rate" if config.stop_on == "rate" else "upper 95% bound of the forget rate"
        state.stopped = (f"{figure} <= {config.until_forget_rate:g} at step {state.step}: forget rate {rate:.3g} "
                         f"({found['forget_rate_count']}/{found['forget_rate_n']}, 95% CI {low:.3f}–{high:.3f})")
    return rate


def _check_finite(out: "StepOutput", step: int) -> None:
    bad = out.non_finite()
    if bad:
        value = out.values()[bad[0]]
        raise NonFiniteFailure(f"{bad[0]} became {value} in step {step + 1}; lower --lr", step)


class ForgetProbe:
    """Measures the forget rate during a run (``--probe-every``, ``--until-forget-rate``): the forget-condition
    rows of ``evaluate`` with ``probe_steps`` DDIM steps and the run's seed, ``probe_samples`` of them
    (:func:`~unlearnctl.metrics.forget.measure_forgetting`); returns the rate with its count, n and interval."""

    def __init__(self, checkpoint: "Checkpoint", forget_set: "ForgetSet", split: "DataSplit", config: UnlearnConfig,
                 progress: ProgressFn = None):
        from unlearnctl.metrics.forget import data_forget_threshold

        if checkpoint.text_conditional:  # the forget prompts' rows of the text evaluation, scored as `evaluate` does
            from unlearnctl.metrics.text import resolve_text_forget

            forget_set = resolve_text_forget(forget_set.spec, split)  # the job's split: text_forget_set's, captioned
        self.checkpoint, self.forget_set, self.config = checkpoint, forget_set, config
        self.classifier = self.threshold = None
        if forget_set.mode == "class":
            from unlearnctl.metrics.classifier import load_or_train_classifier

            self.classifier = load_or_train_classifier(split, progress=progress)
        else:
            self.threshold = data_forget_threshold(forget_set.forget.images, forget_set.retain.images)
        self.seconds = 0.0

    def __call__(self, unet: torch.nn.Module) -> dict[str, Any]:
        from unlearnctl.metrics.forget import measure_forgetting

        started = time.perf_counter()
        result = measure_forgetting(unet, self.checkpoint, self.forget_set, classifier=self.classifier,
                                    threshold=self.threshold, num_samples=self.config.probe_samples,
                                    steps=self.config.probe_steps, seed=self.config.seed)
        self.seconds += time.perf_counter() - started
        return {k: v for k, v in result.items() if k.startswith("forget_rate") or k == "eval_num_samples"}


def report_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The report without the per-step history (what the CLI prints)."""
    return {k: v for k, v in result.items() if k != "history"}
