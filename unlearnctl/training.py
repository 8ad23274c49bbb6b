"""Denoising training: the loop behind ``train``, ``retrain`` and the DiMRA relearning attack.

The denoising loss of the model's ``prediction_type`` (ε, v or x₀; :mod:`unlearnctl.diffusion`) on random
timesteps, through the model's :class:`~unlearnctl.denoisers.Denoiser`; AdamW with linear warm-up then cosine (or constant) learning rate;
EMA of the weights; for class-conditional models a share of labels is replaced by the null class so the
model also learns the unconditional branch used by classifier-free guidance.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from unlearnctl.data import ImageSet
from unlearnctl.diffusion import NoiseSchedule, check_prediction_type, denoising_loss
from unlearnctl.errors import BadInputError, NonFiniteFailure, require
from unlearnctl.progress import ProgressFn, report

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.denoisers import Denoiser
    from unlearnctl.data import DataSplit, ForgetSpec
    from unlearnctl.resume import Checkpointer, ResumeOptions


LR_SCHEDULES = ("constant", "cosine")  # the shapes lr_factor knows (train and unlearn)


@dataclass
class TrainConfig:
    """Recipe of a denoising training run; recorded in the lineage so ``retrain`` can repeat it."""

    steps: int = 3000  # optimizer steps
    batch_size: int = 128  # images per step
    lr: float = 1e-3  # AdamW peak learning rate
    lr_schedule: str = "cosine"  # "cosine" (to 10% of peak) or "constant", both after warm-up
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    ema_decay: float = 0.999  # EMA of weights (0 = off, save raw weights)
    label_dropout: float = 0.1  # conditional: share of labels replaced by the null class
    grad_clip: float = 1.0  # total gradient-norm clip
    seed: int = 0  # seeds batches, timesteps and noise

    def __post_init__(self):
        require(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        require(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        require(0 < self.lr <= 1, f"learning rate must be in (0, 1], got {self.lr}")
        require(self.lr_schedule in LR_SCHEDULES, f"lr schedule must be cosine or constant, got {self.lr_schedule!r}")
        require(self.warmup_steps >= 0, f"warm-up steps must be >= 0, got {self.warmup_steps}")
        require(0 <= self.ema_decay < 1, f"EMA decay must be in [0, 1), got {self.ema_decay}")
        require(0 <= self.label_dropout < 1, f"label dropout must be in [0, 1), got {self.label_dropout}")
        require(self.grad_clip > 0, f"gradient clip must be > 0, got {self.grad_clip}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_factor(step: int, steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``steps``: linear warm-up, then
    ``constant`` or ``cosine`` (from the peak down to 10% of it)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of parameters with the usual warm-up ``min(decay, (1+n)/(10+n))``."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, value in module.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[name].lerp_(value.detach(), 1 - decay)
            else:
                self.shadow[name].copy_(value)

    def load(self, shadow: dict[str, torch.Tensor], updates: int) -> None:
        """Restore a saved EMA (resume); refuses tensors that do not match the model's."""
        device = next(iter(self.shadow.values())).device
        require(shadow.keys() == self.shadow.keys(), "EMA tensors do not match the model")
        self.shadow = {k: v.to(device) for k, v in shadow.items()}
        self.updates = updates


class BatchSampler:
    """Endless random mini-batches (with replacement) from an :class:`ImageSet`, seeded: images and their
    labels, or the rows of ``conditions`` (one per image: text models' prompt embeddings) when given."""

    def __init__(self, data: ImageSet, batch_size: int, generator: torch.Generator, conditions: torch.Tensor | None = None):
        require(len(data) > 0, "cannot draw batches from an empty image set")
        self.data, self.batch_size, self.generator = data, batch_size, generator
        self.conditions = data.labels if conditions is None else conditions

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        index = torch.randint(0, len(self.data), (self.batch_size,), generator=self.generator)
        return self.data.images[index], None if self.conditions is None else self.conditions[index]


def drop_labels(labels: torch.Tensor, null_class: int, share: float, generator: torch.Generator) -> torch.Tensor:
    """Replace a random ``share`` of labels by the null class (classifier-free guidance training)."""
    return drop_conditions(labels, torch.full_like(labels, null_class), share, generator)


def drop_conditions(conditions: torch.Tensor, null: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Replace a random ``share`` of the rows of ``conditions`` by the rows of ``null`` (guidance training)."""
    keep = torch.rand(conditions.shape[:1], generator=generator) >= share
    return torch.where(keep.view(-1, *[1] * (conditions.ndim - 1)), conditions, null.to(conditions.device))


def check_finite(loss: torch.Tensor, step: int, last_good: Callable[[], dict[str, torch.Tensor] | None] = lambda: None) -> None:
    """Stop with :class:`NonFiniteFailure` (exit 1) if ``loss`` is NaN/Inf; ``step`` = steps completed so far."""
    if not torch.isfinite(loss):
        raise NonFiniteFailure(f"loss became {loss.item()} in step {step + 1}; lower --lr", step, last_good())


def loop_state(unet: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, ema: "EMA | None",
               generator: torch.Generator) -> dict[str, Any]:
    """Everything :func:`fit_denoiser` changes, for a resumable state file (:mod:`unlearnctl.resume`)."""
    return {"model": unet.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "ema": None if ema is None else {"shadow": ema.shadow, "updates": ema.updates},
            "generator": generator.get_state()}


def load_loop_state(state: dict[str, Any], unet: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    ema: "EMA | None", generator: torch.Generator) -> None:
    """Inverse of :func:`loop_state`; a state that does not fit this run raises :class:`BadInputError`."""
    from unlearnctl.errors import BadInputError

    try:
        unet.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        require((state["ema"] is None) == (ema is None), "EMA on in one run and off in the other")
        if ema is not None:
            ema.load(state["ema"]["shadow"], int(state["ema"]["updates"]))
        generator.set_state(state["generator"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise BadInputError(f"the resume state does not fit this run ({str(exc)[:120]}); start over without --resume") from None


def fit_denoiser(
    denoiser: "Denoiser",
    data: ImageSet,
    config: TrainConfig,
    *,
    progress: ProgressFn = None,
    task: str = "train",
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
    checkpointer: "Checkpointer | None" = None,
    conditional: bool | None = None,
    conditions: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Train ``denoiser.network`` in place on ``data`` with the denoising loss of its ``prediction_type``;
    returns the weights to save (EMA if on).

    Under ``accelerate launch`` the processes split every global batch and average their gradients
    (the denoiser's :class:`~unlearnctl.runtime.Runtime`, made here for ``config.batch_size``): the same
    steps as one process, with ``batch_size`` images in all. The forward passes run at the runtime's precision.

    Class-conditional models train on the data's labels; when the model has a null class, a share
    ``config.label_dropout`` of them is replaced by it (guidance training), else every label is kept.
    Unconditional ones ignore labels.

    Text-to-image models train on ``conditions``, one prompt embedding per image, a share
    ``config.label_dropout`` of them replaced by the empty prompt's.

    Args:
        conditional: train on the data's labels (default: when the denoiser has a null class).
        conditions: per-image conditions other than labels (text models: prompt embeddings ``[N, L, D]``).
        on_step: called as ``on_step(step, network)`` after each optimizer step (probes, curves).
        checkpointer: writes a resumable state every N steps and, when resuming, the state to start from
            (:mod:`unlearnctl.resume`); the resumed run is bit-identical to an uninterrupted one on CPU.

    Raises:
        NonFiniteFailure: the loss, the gradient norm or a weight became NaN/Inf. The loss and gradient are
            checked before the optimizer step, the weights after it (before the EMA takes them in), so the
            failure carries the last good weights (the EMA's when on) whenever a finite copy exists.
    """
    from dataclasses import replace

    from unlearnctl.distributed import shard_for
    from unlearnctl.tensors import finite_or_none, first_nonfinite

    unet = denoiser.network
    null_class = getattr(denoiser, "null_class", None)
    conditional = null_class is not None if conditional is None else conditional
    require(not conditional or data.labels is not None, "a class-conditional model needs labelled data")
    denoiser.runtime = runtime = replace(denoiser.runtime, shard=shard_for(config.batch_size))
    generator = torch.Generator().manual_seed(config.seed)
    batches = BatchSampler(data, config.batch_size, generator, conditions)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config.steps, config.lr_schedule, config.warmup_steps))
    ema = EMA(unet, config.ema_decay) if config.ema_decay > 0 else None
    device = next(unet.parameters()).device
    unet.train()
    start = 0
    saved = checkpointer.restore() if checkpointer is not None else None
    if saved is not None:
        load_loop_state(saved, unet, optimizer, scheduler, ema, generator)
        start = checkpointer.start_step

    def last_good() -> dict[str, torch.Tensor] | None:
        return finite_or_none(ema.shadow if ema is not None else unet.state_dict())

    started = time.perf_counter()
    params = list(unet.parameters())
    for step in range(start, config.steps):
        x, labels = batches.next()  # the global batch; each process scores its share (denoising_loss)
        if conditions is not None:
            labels = drop_conditions(labels, denoiser.null_condition(labels), config.label_dropout, generator)
        elif not conditional:
            labels = None
        elif null_class is not None:
            labels = drop_labels(labels, null_class, config.label_dropout, generator)
        loss = denoising_loss(denoiser, denoiser.encode(x.to(device)), labels, generator).mean()
        loss_value = runtime.mean_floats([float(loss.detach())])[0]  # the global batch's loss, alike on every process
        check_finite(torch.tensor(loss_value), step, last_good)
        optimizer.zero_grad(set_to_none=True)
        runtime.backward(loss, params)  # loss.backward(); averaged over processes; fp16 loss scaling
        grad_norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        if not torch.isfinite(grad_norm):
            raise NonFiniteFailure(f"gradient norm became {float(grad_norm)} in step {step + 1}; lower --lr", step, last_good())
        optimizer.step()
        scheduler.step()
        bad = first_nonfinite(dict(unet.named_parameters()))
        if bad is not None:
            raise NonFiniteFailure(f"weight {bad} became non-finite in step {step + 1}; lower --lr", step,
                                   finite_or_none(ema.shadow) if ema is not None else None)
        if ema is not None:
            ema.update(unet)
        if on_step is not None:
            on_step(step + 1, unet)
        if checkpointer is not None:
            checkpointer.maybe_save(step + 1, lambda: loop_state(unet, optimizer, scheduler, ema, generator))
        report(progress, task, step + 1, config.steps, loss=loss_value, grad_norm=float(grad_norm),
               elapsed=time.perf_counter() - started)
    unet.eval()
    if ema is not None:
        unet.load_state_dict(ema.shadow)
    return {k: v.detach().cpu().clone() for k, v in unet.state_dict().items()}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else must be a valid torch device."""
    if device == "auto":
        from unlearnctl.distributed import device as process_device

        return process_device("auto") or torch.device("cuda" if torch.cuda.is_available() else "cpu")  # launched: rank's GPU
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise BadInputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    require(resolved.type != "cuda" or torch.cuda.is_available(), f"device {device!r} asked for but no CUDA GPU is available; use --device cpu")
    return resolved


def train_model(
    data: "DataSplit",
    *,
    conditional: bool,
    preset: str = "small",
    unet_overrides: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    exclude: "ForgetSpec | None" = None,
    device: str = "auto",
    progress: ProgressFn = None,
    command: str = "train",
    resume: "ResumeOptions | None" = None,
    precision: str = "fp32",
    prediction_type: str = "epsilon",
) -> "Checkpoint":
    """Train a new ``UNet2DModel`` from scratch on ``data.train`` (minus ``exclude``, if given).

    ``prediction_type`` is what the network learns to predict: ``epsilon`` (the noise), ``v_prediction``
    (v = γ_t ε − σ_t x₀) or ``sample`` (x₀); it is part of the recipe and of the saved scheduler config.

    ``exclude`` makes the model an exact-unlearning reference: trained on the retain set only.
    ``resume`` writes resumable states every N steps and/or continues from one (same parameters only).
    ``precision`` (fp32, bf16, fp16 on CUDA) is the forward passes' autocast; it is recorded in the lineage.
    Returns an unsaved :class:`~unlearnctl.checkpoint.Checkpoint` whose lineage records the recipe.
    On NaN/Inf, the :class:`NonFiniteFailure` carries the last good weights as ``.checkpoint``.
    """
    from unlearnctl.checkpoint import Checkpoint, build_unet, default_scheduler, lineage_entry, plain_config
    from unlearnctl.checkpoint.model import null_class_of
    from unlearnctl.data import check_compatible, resolve_forget
    from unlearnctl.denoisers import PixelDenoiser
    from unlearnctl.runtime import Runtime
    from unlearnctl.models import unet_config

    config = config or TrainConfig()
    train_set, forget_info = data.train, None
    if exclude is not None and not exclude.empty:
        forget = resolve_forget(exclude, data)
        train_set, forget_info = forget.retain, forget.describe()
    require(not conditional or train_set.labels is not None, "--conditional needs labelled data (class sub-folders or npz labels)")
    desc = data.description
    num_classes = len(desc["class_names"]) if conditional else None
    cfg = unet_config(preset, resolution=desc["resolution"], channels=desc["channels"], num_classes=num_classes, overrides=unet_overrides)
    if conditional:  # a --unet-config may set num_class_embeds = classes: conditional, no null class, no guidance
        require(cfg.get("num_class_embeds") is not None, "the UNet config's num_class_embeds is null; drop it or train --unconditional")
        check_compatible(desc, cfg, conditional)
    scheduler_config = {**plain_config(default_scheduler().config), "prediction_type": check_prediction_type(prediction_type)}
    params = {"preset": preset, "conditional": conditional, "unet_overrides": unet_overrides or {}, "train": config.to_dict(),
              "num_train_images": len(train_set), "prediction_type": prediction_type}
    checkpointer = None
    if resume is not None:
        checkpointer = resume.start(command, {**params, "unet_config": cfg, "data_fingerprint": train_set.fingerprint,
                                              "forget": forget_info}, config.steps)
    torch.manual_seed(config.seed)
    runtime = Runtime.create(resolve_device(device), precision)
    null_class = null_class_of(cfg, len(desc["class_names"])) if conditional else None
    denoiser = PixelDenoiser(build_unet(cfg).to(runtime.device), NoiseSchedule(scheduler_config), runtime, null_class)
    started = time.perf_counter()
    try:
        weights = fit_denoiser(denoiser, train_set, config, progress=progress, task=command, checkpointer=checkpointer,
                               conditional=conditional)
    except NonFiniteFailure as exc:
        if exc.weights is not None:
            entry = lineage_entry(command, params, config.seed, time.perf_counter() - started, data_fingerprint=train_set.fingerprint,
                                  forget=forget_info, stopped=str(exc), steps_run=exc.step)
            exc.checkpoint = Checkpoint(exc.weights, cfg, scheduler_config, desc, [entry])
        raise
    unseen_as_null = bool(null_class is not None and forget_info and forget_info["mode"] == "class")
    if unseen_as_null:
        weights = answer_unseen_classes_as_null(weights, forget_info["class_ids"], null_class)
    entry = lineage_entry(command, params, config.seed, time.perf_counter() - started,
                          data_fingerprint=train_set.fingerprint, forget=forget_info, precision=precision,
                          unseen_classes_as_null=unseen_as_null)
    return Checkpoint(weights, cfg, scheduler_config, desc, [entry])


def answer_unseen_classes_as_null(weights: dict[str, torch.Tensor], class_ids: list[int], null_class: int) -> dict[str, torch.Tensor]:
    """Give never-trained class embeddings the null class's embedding.

    A model trained without a class never learns that class's embedding row; left at its random
    initialisation, asking for the class yields arbitrary blends of other classes. The exact-unlearning
    answer to "generate a class you never saw" is "generate as if no class was given", which is what the
    null (guidance) embedding learned.
    """
    weights = dict(weights)
    table = weights["class_embedding.weight"].clone()
    table[class_ids] = table[null_class].clone()
    weights["class_embedding.weight"] = table
    return weights
