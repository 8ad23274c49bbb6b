"""DiMRA: the diffusion-model relearning attack (Yuan et al., "Towards Irreversible Machine Unlearning for
Diffusion Models", arXiv 2512.03564).

Threat model: the attacker holds the unlearned weights and the conditioning format (the class labels),
not the forget set and not what was forgotten. The attack is ordinary denoising fine-tuning,

    min_θ  E_{(x, c) ~ D_au, t, ε} || ε − ε_θ(γ_t x + σ_t ε, t, c) ||²,

on an auxiliary set D_au that holds none of the forgotten elements: (i) part of the retain set, or (ii) a
set of similar distribution — images the model generates itself, or public data. The unlearning was only
superficial if the forgotten class or data comes back ("relearning"); the relearn gap (docs/metrics.md) is the
forget rate after the attack minus the forget rate before.

The loop is :func:`unlearnctl.training.fit_denoiser` — the same loss, batches, label dropout and clipping
as training — with a constant learning rate and no EMA. With ``curve_every = K`` the forget rate of
:func:`unlearnctl.metrics.forget.measure_forgetting` is recorded at step 0, every K steps and at the end,
with the same sampling seed each time, so the curve shows relearning rather than sampling noise.

Text-to-image models (issue 15) are attacked the same way on image–caption pairs: the condition c of an
auxiliary image is its caption's prompt embedding, 10% replaced by the empty prompt's, exactly as
``train --text-to-image`` trains; the guard also keeps every forget prompt out of the auxiliary captions.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from unlearnctl.attacks import AuxContext, AuxSource, parse_aux_spec
from unlearnctl.errors import BadInputError, require
from unlearnctl.progress import ProgressFn, report

if TYPE_CHECKING:
    import torch

    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import DataSplit, ForgetSet, ForgetSpec, ImageSet
    from unlearnctl.resume import Checkpointer, ResumeOptions
    from unlearnctl.training import TrainConfig

CURVE_SCHEMA = "unlearnctl.relearn-curve"
CURVE_SCHEMA_VERSION = 1
CURVE_CSV_COLUMNS = ("step", "forget_rate", "num_samples", "mode", "method", "aux", "model_sha256")


@dataclass
class AttackConfig:
    """The attack recipe; recorded in the lineage. Defaults reconstruct the paper's setting (docs/attack.md).

    The paper gives the attacker an ordinary fine-tuning run, nothing tuned per unlearning method; we read
    "ordinary" as the base model's own training recipe continued at the learning rate it ended with.
    """

    steps: int = 500  # optimizer steps; the figure uses 500
    batch_size: int = 128  # images per step: the base recipe's batch (TrainConfig.batch_size)
    lr: float = 1e-4  # constant AdamW lr: where the base recipe's cosine ends (10% of its 1e-3 peak)
    warmup_steps: int = 0  # none: a fine-tune of a trained model, not training from scratch
    weight_decay: float = 0.0  # as the base recipe
    label_dropout: float = 0.1  # as training: conditional models keep their labels, 10% go to the null class
    grad_clip: float = 1.0  # total gradient-norm clip, as training
    seed: int = 0  # seeds batches, timesteps, noise, the retain subset and generation
    num_generated: int = 1000  # `generated` source: images sampled, balanced over the retained classes
    generate_steps: int = 50  # `generated` source: DDIM steps (guidance 1, i.e. none)
    curve_samples: int = 200  # curve: forget-condition images per point (rounded up to a multiple of the forget conditions)
    curve_sample_steps: int = 25  # curve: DDIM steps per sample
    curve_seed: int = 0  # curve: the same initial noise at every point
    curve_eval_samples: int | None = None  # curve: the `evaluate --num-samples` whose forget rows it regenerates (None: the fewest giving curve_samples)
    classifier: str | None = None  # curve, class mode: the user's classifier .safetensors (docs/metrics.md); None = the tool's own
    concept_class: str | None = None  # curve, text-to-image models: the class of a --forget-prompt concept (None: the class whose captions include it)

    def __post_init__(self):
        require(self.steps >= 1, f"attack steps must be at least 1, got {self.steps}")
        require(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        require(0 < self.lr <= 1, f"learning rate must be in (0, 1], got {self.lr}")
        require(self.warmup_steps >= 0, f"warm-up steps must be >= 0, got {self.warmup_steps}")
        require(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        require(0 <= self.label_dropout < 1, f"label dropout must be in [0, 1), got {self.label_dropout}")
        require(self.grad_clip > 0, f"gradient clip must be > 0, got {self.grad_clip}")
        require(self.num_generated >= 1, f"number of generated images must be at least 1, got {self.num_generated}")
        require(self.generate_steps >= 1, f"generation steps must be at least 1, got {self.generate_steps}")
        require(self.curve_samples >= 1, f"curve samples must be at least 1, got {self.curve_samples}")
        require(self.curve_sample_steps >= 1, f"curve sample steps must be at least 1, got {self.curve_sample_steps}")
        require(self.curve_eval_samples is None or self.curve_eval_samples >= 1,
                f"curve evaluation samples must be at least 1, got {self.curve_eval_samples}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def train_config(self) -> "TrainConfig":
        """The :class:`~unlearnctl.training.TrainConfig` of the fine-tuning: constant lr, raw weights (no EMA)."""
        from unlearnctl.training import TrainConfig

        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, lr_schedule="constant",
                           warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, ema_decay=0.0,
                           label_dropout=self.label_dropout, grad_clip=self.grad_clip, seed=self.seed)


@dataclass
class RelearnCurve:
    """Forget rate against attack steps (the JSON/CSV schema is in docs/attack.md).

    Attributes:
        every: measured every this many steps (plus step 0 and the last step).
        forget: ``ForgetSet.describe()`` of what is measured.
        metric: how it is measured: mode, samples, sampler, steps, guidance, seed, classifier or threshold.
        points: ``{"step", "forget_rate", "num_samples"}`` dicts, by step.
        model_path, model_sha256: the attacked (input) checkpoint.
        method: the newest unlearning method in the input's lineage (``None`` if none).
        aux: the auxiliary data's spec, size and fingerprint.
        attack: the :class:`AttackConfig` as a dict.
        attacked_sha256: the attacked (output) checkpoint's sha256 once saved (set by the caller; ``compare``
            attaches the curve to that model's evaluation).
    """

    every: int
    forget: dict[str, Any]
    metric: dict[str, Any]
    points: list[dict[str, Any]] = field(default_factory=list)
    model_path: str | None = None
    model_sha256: str | None = None
    method: str | None = None
    aux: dict[str, Any] = field(default_factory=dict)
    attack: dict[str, Any] = field(default_factory=dict)
    attacked_sha256: str | None = None

    @property
    def before(self) -> float | None:
        return self.points[0]["forget_rate"] if self.points else None

    @property
    def after(self) -> float | None:
        return self.points[-1]["forget_rate"] if self.points else None

    @property
    def relearn_gap(self) -> float | None:
        """Forget rate after the attack minus before (docs/metrics.md)."""
        return None if not self.points else self.after - self.before

    def lineage_record(self) -> dict[str, Any]:
        """What the attacked checkpoint's lineage keeps (the rest is already in the entry)."""
        from unlearnctl.attacks.area import relearn_area

        return {"every": self.every, "forget": self.forget, "metric": self.metric, "points": self.points,
                "forget_rate_before": self.before, "forget_rate_after": self.after, "relearn_gap": self.relearn_gap,
                **relearn_area(self.points)}

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "schema": CURVE_SCHEMA, "schema_version": CURVE_SCHEMA_VERSION,
            "model": {"path": self.model_path, "sha256": self.model_sha256}, "method": self.method,
            "attack": {"name": "dimra", **self.attack}, "aux": self.aux, "budget": self.budget,
            "attacked_sha256": self.attacked_sha256, **self.lineage_record(),
        }

    @property
    def budget(self) -> dict[str, Any]:
        """The attack budget (:func:`unlearnctl.attacks.area.attack_budget`): aux spec, steps, lr and the rest of the recipe."""
        from unlearnctl.attacks.area import attack_budget

        return attack_budget({"attack": self.attack, "aux": self.aux})

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CURVE_CSV_COLUMNS)
        for point in self.points:
            writer.writerow([point["step"], f"{point['forget_rate']:.6g}", point["num_samples"], self.metric["mode"],
                             self.method or "", self.aux.get("spec", ""), self.model_sha256 or ""])
        return buffer.getvalue()


# --------------------------------------------------------------------------------------------- forget sets


def rebuild_forget_set(spec: "ForgetSpec", split: "DataSplit") -> "ForgetSet":
    """The forget set of ``spec`` on ``split`` as far as it is data (a text-to-image model's split carries captions).

    A ``--forget-prompt`` concept was forgotten as the training images captioned exactly so *and* images the base
    model drew for the prompt (:func:`unlearnctl.text_unlearning.text_forget_set`). The drawn images cannot be
    redrawn from the unlearned model, so only the training part is rebuilt (possibly empty); the prompts
    themselves stay out of the auxiliary captions (:attr:`~unlearnctl.attacks.AuxContext.forget_captions`).
    """
    import torch

    from unlearnctl.data import ForgetSet, resolve_forget

    train = split.train
    only_drawn = bool(spec.prompts) and not any(caption in spec.prompts for caption in train.captions or ())
    if only_drawn and replace(spec, prompts=()).empty:  # no training image is captioned with the prompts: only drawn ones
        nothing = torch.zeros(len(train), dtype=torch.bool)
        return ForgetSet("class", nothing, train.subset(nothing), train, [], spec)
    return resolve_forget(spec, split)


def _key(forget_set: "ForgetSet") -> tuple[str, tuple[str, ...]]:
    """Identical forget sets appear once: same images (fingerprint) and same forget prompts."""
    return forget_set.fingerprint, tuple(sorted(forget_set.spec.prompts))


def recorded_forget_sets(checkpoint: "Checkpoint", split: "DataSplit") -> list["ForgetSet"]:
    """Every forget set the lineage records (``forget`` blocks), rebuilt on ``split`` and fingerprint-checked.

    Identical forget sets appear once. A forget set with prompts (``--forget-prompt``) is rebuilt without the
    images the base drew for them (:func:`rebuild_forget_set`), so its recorded fingerprint — which covers
    those images — is not compared; the rest of such a spec is rebuilt and excluded as any other.
    """
    from unlearnctl.data import ForgetSpec

    found: dict[tuple[str, tuple[str, ...]], "ForgetSet"] = {}
    for i, entry in enumerate(checkpoint.lineage):
        block = entry.get("forget") if isinstance(entry, dict) else None
        if not isinstance(block, dict) or not isinstance(block.get("spec"), dict):
            continue
        where = f"lineage entry {i} ({entry.get('command', '?')})"
        spec = ForgetSpec.from_dict(block["spec"])
        try:
            forget_set = rebuild_forget_set(spec, split)
        except BadInputError as exc:
            raise BadInputError(f"{where} records a forget set that cannot be rebuilt ({exc}); without it the attack "
                                "cannot prove its auxiliary data excludes it") from None
        recorded = block.get("fingerprint")
        require(bool(spec.prompts) or recorded in (None, forget_set.fingerprint),
                f"{where}: its forget set now resolves to other images (fingerprint {forget_set.fingerprint} != "
                f"recorded {recorded}); the data changed since unlearning")
        found.setdefault(_key(forget_set), forget_set)
    return list(found.values())


def unlearning_method(checkpoint: "Checkpoint") -> str | None:
    """The newest ``method`` in the lineage (the unlearning method that produced the model), if any."""
    for entry in reversed(checkpoint.lineage):
        if isinstance(entry, dict) and entry.get("method"):
            return str(entry["method"])
    return None


# --------------------------------------------------------------------------------------------- aux data


def build_aux_data(source: AuxSource, arg: str, context: AuxContext) -> tuple["ImageSet", dict[str, Any]]:
    """Build the auxiliary set of ``source`` and pass it through the forget-set guard.

    Returns the images to fine-tune on and the facts the lineage records about them: spec, size,
    fingerprint, class counts, the copies dropped, the forget fingerprints and the shared-image count (0);
    for text-to-image models also the pairs dropped for a forget caption, those captions and the shared count (0).
    """
    import torch

    from unlearnctl.attacks.guard import (assert_captions_disjoint, assert_disjoint, exclude_forget_captions,
                                          exclude_forget_copies, near_copy_threshold)

    spec = f"{source.name}:{arg}" if arg else source.name
    candidates, details = source.build(arg, context)
    require(len(candidates) > 0, f"auxiliary source {spec} produced no images")
    found: dict[str, Any] = {"dropped_exact_copies": 0, "dropped_near_copies": 0, "near_copy_threshold": None}
    aux, shared = candidates, 0
    if any(len(forget_set.forget) for forget_set in context.forget_sets):
        forget_images = torch.cat([forget_set.forget.images for forget_set in context.forget_sets])
        retained = context.split.train.images[~context.excluded_mask()]
        threshold = near_copy_threshold(forget_images, retained)
        aux, found = exclude_forget_copies(candidates, forget_images, threshold, refuse=source.user_data, origin=spec)
        require(len(aux) > 0, f"every image of auxiliary source {spec} copies a forget image; nothing is left to attack with")
        shared = assert_disjoint(aux.images, forget_images)
    if context.checkpoint.text_conditional:  # the guard extends to captions: no forget prompt among them
        forget_captions = context.forget_captions
        aux, dropped = exclude_forget_captions(aux, forget_captions, refuse=source.user_data, origin=spec)
        require(len(aux) > 0, f"every caption of auxiliary source {spec} is a forget prompt; nothing is left to attack with")
        found.update(dropped, forget_captions=sorted(forget_captions),
                     shared_captions=assert_captions_disjoint(aux.captions, forget_captions))
    counts = None
    if aux.labels is not None:
        names = aux.class_names or [str(c) for c in range(int(aux.labels.max()) + 1)]
        counts = {names[c]: int((aux.labels == c).sum()) for c in range(len(names)) if bool((aux.labels == c).any())}
    info = {"source": source.name, "spec": spec, **details, "num_candidates": len(candidates), **found,
            "num_images": len(aux), "fingerprint": aux.fingerprint, "class_counts": counts,
            "forget_fingerprints": [forget_set.fingerprint for forget_set in context.forget_sets],
            "shared_images": shared}
    return aux, info


# --------------------------------------------------------------------------------------------- the attack


def _curve_probe(checkpoint: "Checkpoint", forget_set: "ForgetSet", split: "DataSplit", config: AttackConfig,
                 progress: ProgressFn) -> tuple[Callable[["torch.nn.Module"], dict[str, Any]], dict[str, Any]]:
    """A function measuring the forget rate of a model, and the description of how it measures."""
    from unlearnctl.metrics.forget import (data_forget_threshold, evaluation_forget_rows, evaluation_samples,
                                           measure_forgetting)

    classifier, threshold, metric = None, None, {"mode": forget_set.mode}
    if forget_set.mode == "class":
        from unlearnctl.metrics.classifier import describe, resolve_classifier

        classifier = resolve_classifier(split, config.classifier, progress=progress)
        metric["classifier"] = describe(classifier)
    else:
        threshold = data_forget_threshold(forget_set.forget.images, forget_set.retain.images)
        metric["threshold"] = threshold
    total = config.curve_eval_samples or evaluation_samples(checkpoint, forget_set, config.curve_samples)
    conditions = "labels"
    if checkpoint.text_conditional:  # the forget prompts' rows of the text evaluation's layout
        from unlearnctl.metrics.text import text_sample_plan

        rows, conditions = int(text_sample_plan(forget_set.retain, forget_set, total).forget.sum()), "prompts"
        metric["concept_class"] = config.concept_class
    else:
        rows = len(evaluation_forget_rows(checkpoint, forget_set, total)[1])
    metric.update(num_samples=rows, sampler="ddim", sample_steps=config.curve_sample_steps,
                  guidance=1.0, seed=config.curve_seed, eval_num_samples=total,
                  samples=f"the forget-condition rows of `evaluate --num-samples {total} --steps {config.curve_sample_steps} "
                          f"--sampler ddim --seed {config.curve_seed}` (same {conditions}, same initial noise)")

    def probe(unet: "torch.nn.Module") -> dict[str, Any]:
        return measure_forgetting(unet, checkpoint, forget_set, classifier=classifier, threshold=threshold,
                                  num_samples=config.curve_samples, steps=config.curve_sample_steps,
                                  seed=config.curve_seed, eval_num_samples=total)

    return probe, metric


def _curve_recorder(checkpoint: "Checkpoint", curve_set: "ForgetSet", split: "DataSplit", config: AttackConfig,
                    curve_every: int, aux_info: dict[str, Any], checkpointer: "Checkpointer | None",
                    progress: ProgressFn) -> tuple[RelearnCurve, Callable[[int, "torch.nn.Module"], None]]:
    """The relearning curve and the ``on_step`` that measures it every ``curve_every`` steps (and at the end).

    With a checkpointer, the points measured before an interruption come back with the resumed state.
    """
    probe, metric = _curve_probe(checkpoint, curve_set, split, config, progress)
    curve = RelearnCurve(curve_every, curve_set.describe(), metric, model_path=str(checkpoint.path) if checkpoint.path else None,
                         model_sha256=checkpoint.sha256, method=unlearning_method(checkpoint),
                         aux={k: aux_info[k] for k in ("spec", "num_images", "fingerprint")}, attack=config.to_dict())
    due = sorted({0, *range(curve_every, config.steps + 1, curve_every), config.steps})

    def measure(step: int, model: "torch.nn.Module") -> None:
        if step in due:
            result = probe(model)
            curve.points.append({"step": step, "num_samples": result["num_samples"],
                                 **{k: v for k, v in result.items() if k.startswith("forget_rate")}})
            report(progress, "forget rate", len(curve.points), len(due), forget_rate=result["forget_rate"])

    if checkpointer is not None:
        checkpointer.extras["curve"] = (lambda: {"points": curve.points}, lambda saved: curve.points.extend(saved["points"]))
    return curve, measure


def _recorded_data(checkpoint: "Checkpoint") -> "DataSplit":
    """The model's training data as recorded; the forget sets are rebuilt on it."""
    from unlearnctl.data import load_recorded_data

    try:
        return load_recorded_data(checkpoint.data)
    except BadInputError as exc:
        message = str(exc)
        if "--data" not in message:
            message = f"the model's training data cannot be reloaded ({message}); pass --data"
        raise BadInputError(message) from None


def relearn_attack(
    checkpoint: "Checkpoint",
    aux_spec: str = "retain",
    config: AttackConfig | None = None,
    *,
    curve_forget_spec: "ForgetSpec | None" = None,
    curve_every: int = 0,
    data: "DataSplit | None" = None,
    device: str = "auto",
    progress: ProgressFn = None,
    resume: "ResumeOptions | None" = None,
    precision: str = "fp32",
) -> tuple["Checkpoint", RelearnCurve | None]:
    """Run DiMRA on ``checkpoint``; returns the attacked (unsaved) checkpoint and the relearning curve.

    Args:
        checkpoint: the unlearned model. Its lineage's ``forget`` blocks name what must stay out of the
            auxiliary data.
        aux_spec: the auxiliary data, ``retain[:FRACTION]``, ``generated[:COUNT]``, ``folder:PATH`` or
            ``npz:PATH`` (see :mod:`unlearnctl.attacks`).
        config: the attack recipe (default :class:`AttackConfig`).
        curve_forget_spec: what the curve measures; default the newest forget set in the lineage. It is
            also kept out of the auxiliary data. Text-to-image models: measured as ``evaluate`` measures it
            (:func:`unlearnctl.metrics.text.resolve_text_forget`, with ``config.concept_class``).
        curve_every: record the forget rate every this many steps (and at steps 0 and ``config.steps``);
            0 = no curve.
        data: the model's training data when its recorded source cannot be reloaded as recorded; the
            recorded forget fingerprints must still match.
        device: torch device (``auto`` = CUDA if present).
        progress: progress callback.
        resume: write a resumable state every N steps and/or continue from one (:mod:`unlearnctl.resume`);
            the curve points measured so far are part of the state.
        precision: forward passes of the fine-tuning (and of the curve's samples): fp32, bf16 or fp16 (CUDA).
    """
    from unlearnctl.checkpoint import lineage_entry, weights_sha256
    from unlearnctl.errors import NonFiniteFailure
    from unlearnctl.data import check_compatible
    from unlearnctl.denoisers import denoiser_for
    from unlearnctl.runtime import Runtime
    from unlearnctl.training import fit_denoiser, resolve_device

    from unlearnctl.integrity import require_finite_weights

    require_finite_weights(checkpoint.state_dict, checkpoint.path or "the model")
    config = config or AttackConfig()
    source, arg = parse_aux_spec(aux_spec)
    require(curve_every >= 0, f"curve interval must be >= 0 steps, got {curve_every}")
    text = checkpoint.text_conditional  # image–caption pairs, prompts instead of labels
    require(text or config.concept_class is None, "--concept-class is for text-to-image models (the class of a --forget-prompt)")
    require(text or curve_forget_spec is None or not curve_forget_spec.prompts,
            "--forget-prompt names a concept of a text-to-image model, and this model is not one; give --forget-class")
    started = time.perf_counter()

    # 1. What must stay out: every forget set of the lineage, plus the curve's.
    split = data if data is not None else _recorded_data(checkpoint)
    if text:  # the captions the model trained on (generated ones regenerated from its training seed)
        from unlearnctl.text_unlearning import text_split

        split = text_split(checkpoint, split)
    else:
        check_compatible(split.description, checkpoint.unet_config, checkpoint.conditional, checkpoint.num_classes)
    forget_sets = recorded_forget_sets(checkpoint, split)
    curve_set = None
    if curve_forget_spec is not None and not curve_forget_spec.empty:
        curve_set = rebuild_forget_set(curve_forget_spec, split)
        if _key(curve_set) not in {_key(f) for f in forget_sets}:
            forget_sets.append(curve_set)
    elif curve_every:
        require(bool(forget_sets), "--curve-every needs what to measure: give --forget-class, --forget-index, "
                "--forget-canary, --forget-images or --forget-prompt (the model's lineage records no forget set)")
        curve_set = forget_sets[-1]
    measured = curve_set
    if text and curve_set is not None and curve_every:  # measured as `evaluate` scores a text model's forget set
        from unlearnctl.metrics.text import resolve_text_forget

        measured = resolve_text_forget(curve_set.spec, split, config.concept_class)

    checkpointer = None
    if resume is not None:  # the parameters that determine the result; --resume refuses any change
        checkpointer = resume.start("relearn-attack", {
            "aux": aux_spec, "config": config.to_dict(), "curve_every": curve_every,
            "curve_forget": curve_set.fingerprint if curve_set is not None else None,
            "base_weights_sha256": weights_sha256(checkpoint.state_dict), "data_fingerprint": split.description["fingerprint"]},
            config.steps)

    # 2. The auxiliary data D_au, guarded against forget-set items.
    resolved_device = resolve_device(device)
    context = AuxContext(checkpoint, split, forget_sets, seed=config.seed, num_generated=config.num_generated,
                         generate_steps=config.generate_steps, device=resolved_device, progress=progress)
    aux, aux_info = build_aux_data(source, arg, context)

    # 3. Fine-tune with the training loss, measuring the forget rate along the way.
    denoiser = denoiser_for(checkpoint, Runtime.create(resolved_device, precision))
    unet = denoiser.network
    conditions = None
    if text:  # one prompt embedding [L, D] per auxiliary image: its caption's, as `train --text-to-image` trains
        conditions = denoiser.embed(aux.captions).cpu()  # N×L×D
    curve, on_step = None, None
    if curve_every and measured is not None:
        curve, on_step = _curve_recorder(checkpoint, measured, split, config, curve_every, aux_info, checkpointer, progress)
        if checkpointer is None or checkpointer.resumed is None:
            on_step(0, unet)
    params = {"attack": "dimra", "aux": aux_info["spec"], "config": config.to_dict(), "curve_every": curve_every,
              "curve_forget": curve_forget_spec.to_dict() if curve_forget_spec is not None else None,
              "precision": precision}
    try:
        weights = fit_denoiser(denoiser, aux, config.train_config(), progress=progress, task="relearn-attack",
                               on_step=on_step, checkpointer=checkpointer, conditional=checkpoint.conditional,
                               conditions=conditions)
    except NonFiniteFailure as exc:
        if exc.weights is not None:
            entry = lineage_entry("relearn-attack", params, config.seed, time.perf_counter() - started,
                                  stopped=str(exc), steps_run=exc.step)
            exc.checkpoint = checkpoint.derive(exc.weights, entry)
        raise

    # 4. The lineage says it was attacked, how, and with which auxiliary data.
    attack = {"name": "dimra", "aux": aux_info, "excluded": [forget_set.describe() for forget_set in forget_sets],
              "data_fingerprint": split.description["fingerprint"]}
    entry = lineage_entry("relearn-attack", params, config.seed, time.perf_counter() - started, attack=attack,
                          curve=curve.lineage_record() if curve is not None else None)
    return checkpoint.derive(weights, entry), curve
