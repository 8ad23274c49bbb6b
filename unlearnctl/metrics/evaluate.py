"""One evaluation entry point: :func:`evaluate` scores a checkpoint and returns a flat dict (docs/metrics.md).

Steps, top to bottom:

1. **Resolve** the data (recorded in the checkpoint), the forget set (given, or the newest lineage entry
   with a ``forget`` block, or none), the metric groups to run, the domain classifier and the feature
   extractor — every bad input fails here, before any sampling.
2. **Generate once.** Conditional models: ``num_samples`` images balanced over every class (the null
   class too when forget images have no known class); the samples of retained conditions feed quality
   and retain accuracy, those of the forget condition the forget rate. Unconditional models:
   ``num_samples`` images used by every metric.
3. **Score** each registered metric group (:mod:`unlearnctl.metrics`) on those samples.
4. **Return** ``{schema, <every registered key>, num_*_samples, provenance}``: a key of a group that did
   not run is ``None``; the provenance block records extractor, weights hashes, sampler, seed, versions,
   the model's sha256 and lineage, and the time spent per step.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unlearnctl.data import ForgetSet, ForgetSpec, ImageSet, resolve_forget
from unlearnctl.diffusion import NO_NULL_CLASS_GUIDANCE
from unlearnctl.errors import BadInputError, require
from unlearnctl.metrics import METRICS, register_metric
from unlearnctl.metrics.intervals import BOOTSTRAP_ROUNDS, interval_keys, rate_keys, rate_fields
from unlearnctl.metrics.membership import AuditConfig
from unlearnctl.progress import ProgressFn

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import DataSplit
    from unlearnctl.metrics.classifier import DomainClassifier
    from unlearnctl.metrics.clip import Clip
    from unlearnctl.metrics.fidelity import FeatureSpace

SCHEMA = "unlearnctl.evaluate/1"


@dataclass
class EvalConfig:
    """How to evaluate. Defaults: 10,000 DDIM-50 samples, no guidance, torch-fidelity defaults for KID/PR."""

    num_samples: int = 10_000  # images generated (conditional: balanced over all classes)
    steps: int = 50  # sampler steps
    sampler: str = "ddim"  # ddim (deterministic) or ddpm; text-to-image models also "pipeline" (the pipeline's own)
    guidance: float = 1.0  # classifier-free guidance scale (1 = none)
    seed: int = 0  # seeds sampling, KID subsets and the audit
    sample_batch_size: int | None = None  # images per UNet call; None = sampling.auto_batch_size (from the model's size)
    metrics: tuple[str, ...] | None = None  # metric groups to run; None = every one that applies
    feature_extractor: str = "domain-classifier"  # FID/KID/PR feature space (fidelity.FEATURE_SPACES)
    inception_weights: str | None = None  # local weights for inception-v3-compat
    kid_subsets: int = 100  # torch-fidelity kid_subsets
    kid_subset_size: int = 1000  # torch-fidelity kid_subset_size (capped at the smaller set)
    prc_neighborhood: int = 3  # torch-fidelity prc_neighborhood (k of the k-NN balls)
    bootstrap_rounds: int = BOOTSTRAP_ROUNDS  # rounds of every bootstrap interval (FID, KID, AUC, balanced accuracy)
    audit: AuditConfig = field(default_factory=AuditConfig)  # membership audit parameters (max_images None = min(1000, num_samples))
    audit_reference: str | None = None  # checkpoint that calibrates the audit (never saw forget or held-out images)
    classifier_cache: str | None = None  # folder of cached classifiers (default ~/.cache/unlearnctl)
    classifier: str | None = None  # the user's classifier .safetensors (docs/metrics.md); None = the tool's own
    device: str = "auto"  # torch device
    precision: str = "fp32"  # UNet forward passes while sampling: fp32, bf16 (autocast) or fp16 (CUDA)
    concept_class: str | None = None  # text-to-image: the class of the --forget-prompt concept (None = from the captions)
    clip_model: str | None = None  # text-to-image: folder of local CLIP weights for the CLIP score (None = skipped)

    def __post_init__(self):
        from unlearnctl.diffusion import SAMPLERS, TEXT_SAMPLERS
        from unlearnctl.distributed import check_precision
        from unlearnctl.metrics.fidelity import FEATURE_SPACES

        check_precision(self.precision)

        require(self.num_samples >= 1, f"number of samples must be at least 1, got {self.num_samples}")
        require(self.steps >= 1, f"sampler steps must be at least 1, got {self.steps}")
        require(self.sampler in TEXT_SAMPLERS, f"unknown sampler {self.sampler!r}; choose {' or '.join(SAMPLERS)} "
                "(text-to-image models also: pipeline)")
        require(self.guidance > 0, f"guidance must be positive, got {self.guidance}")
        require(self.sample_batch_size is None or self.sample_batch_size >= 1,
                f"sample batch size must be at least 1, got {self.sample_batch_size}")
        require(self.bootstrap_rounds >= 1, f"bootstrap rounds must be at least 1, got {self.bootstrap_rounds}")
        require(self.feature_extractor in FEATURE_SPACES,
                f"unknown feature extractor {self.feature_extractor!r}; choose {' or '.join(FEATURE_SPACES)}")
        require(self.kid_subsets >= 1 and self.kid_subset_size >= 2, "KID needs at least 1 subset of at least 2 images")
        require(self.prc_neighborhood >= 1, f"precision/recall neighbourhood must be at least 1, got {self.prc_neighborhood}")
        if self.metrics is not None:
            from unlearnctl.metrics import get_metric

            self.metrics = tuple(dict.fromkeys(self.metrics))
            require(len(self.metrics) > 0, "no metric group selected")
            for name in self.metrics:
                get_metric(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["audit"] = self.audit.to_dict()
        data["metrics"] = list(self.metrics) if self.metrics is not None else None
        return data


@dataclass
class Samples:
    """The generated images of one evaluation, shared by every metric.

    Attributes:
        images: ``N×C×H×W`` in [-1, 1].
        labels: the class each image was generated for (``None`` for unconditional models).
        retain: bool ``[N]``: samples of retained conditions (quality, retain accuracy).
        forget: bool ``[N]``: samples of the forget condition (forget rate); all for unconditional models.
        prompts: text-to-image models: the prompt of each image (``labels`` then holds its class, or -1).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    retain: torch.Tensor
    forget: torch.Tensor
    prompts: list[str] | None = None


@dataclass
class EvalContext:
    """What a metric group's ``compute`` sees."""

    checkpoint: "Checkpoint"
    unet: torch.nn.Module
    split: "DataSplit"
    forget_set: ForgetSet | None
    config: EvalConfig
    device: torch.device
    classifier: "DomainClassifier | None" = None
    reference: "Checkpoint | None" = None  # membership audit calibration model
    feature_space: "FeatureSpace | None" = None
    clip: "Clip | None" = None  # text-to-image: the CLIP model of the CLIP score
    samples: Samples | None = None
    audit: AuditConfig | None = None  # the audit's parameters with the evaluation's budget applied
    sample_batch_size: int = 1000  # resolved images per UNet call
    progress: ProgressFn = None
    details: dict[str, Any] = field(default_factory=dict)  # per-group provenance

    @property
    def real_retain(self) -> ImageSet:
        """The real reference of quality metrics: the retain set, or the whole train split."""
        return self.forget_set.retain if self.forget_set is not None else self.split.train

    @property
    def labelled(self) -> bool:
        return self.split.train.labels is not None and len(self.split.class_names) >= 2


# --------------------------------------------------------------------------------------------- metric groups


def _no_forget_set(context: EvalContext) -> str | None:
    return None if context.forget_set is not None else "no forget set (give --forget-* or evaluate an unlearned model)"


@register_metric("quality", keys={
    "fid": "Fréchet distance (torch-fidelity) between generated retained-condition samples and real retain images",
    **interval_keys("fid", "bootstrap (generated feature rows resampled, centred on fid)"),
    "fid_n": "generated samples behind fid and kid",
    "kid": "kernel (polynomial) MMD² mean over torch-fidelity's random subsets",
    **interval_keys("kid", "bootstrap (generated feature rows resampled, centred on kid)"),
    "kid_n": "generated samples behind kid",
    "kid_std": "standard deviation of KID over the subsets",
    "precision": "share of generated samples inside the k-NN ball of some real image (Kynkäänniemi et al.)",
    "recall": "share of real images inside the k-NN ball of some generated sample",
    "f_score": "harmonic mean of precision and recall",
})
def quality(context: EvalContext) -> dict[str, Any]:
    from unlearnctl.metrics.fidelity import fidelity_metrics, to_pixels

    config, samples = context.config, context.samples
    generated = samples.images[samples.retain]
    real = context.real_retain.images
    context.details["quality"] = {"num_generated": len(generated), "num_real": len(real),
                                  "real_fingerprint": context.real_retain.fingerprint,
                                  "real": "retain set of the train split" if context.forget_set else "train split"}
    values = fidelity_metrics(to_pixels(generated), to_pixels(real), context.feature_space,
                              kid_subsets=config.kid_subsets, kid_subset_size=config.kid_subset_size,
                              prc_neighborhood=config.prc_neighborhood, batch_size=max(64, context.sample_batch_size),
                              seed=config.seed, device=context.device, bootstrap_rounds=config.bootstrap_rounds)
    return {**values, "fid_n": len(generated), "kid_n": len(generated)}


@register_metric("forget", keys={
    "forget_rate": "class mode: share of forget-condition samples classified as a forgotten class; "
                   "data mode: share within forget_threshold of a forget image",
    **rate_keys("forget_rate", "forget-condition samples scored"),
    "forget_confident_rate": "class mode: share of forget-condition samples given a forgotten class with probability > 0.9",
    **rate_keys("forget_confident_rate", "forget-condition samples scored"),
    "forget_mean_probability": "class mode: mean classifier probability of the forgotten class(es) over forget-condition samples",
    "forget_mode": "class or data",
    "forget_threshold": "data mode: calibrated pixel-L2 distance (0.5 × min retain-to-forget distance, images in [-1, 1])",
    "forget_nearest_distance": "data mode: median distance of forget-condition samples to their nearest forget image",
}, applies=_no_forget_set)
def forget(context: EvalContext) -> dict[str, Any]:
    from unlearnctl.metrics.forget import class_forget_counts, data_forget_hits, data_forget_threshold, nearest_distance

    forget_set, samples = context.forget_set, context.samples
    images = samples.images[samples.forget]
    if forget_set.mode == "class":
        counts = class_forget_counts(images, forget_set.class_ids, context.classifier)
        return {**rate_fields("forget_rate", counts["hits"], counts["n"]),
                **rate_fields("forget_confident_rate", counts["confident"], counts["n"]),
                "forget_mean_probability": counts["mean_probability"], "forget_mode": "class",
                "forget_threshold": None, "forget_nearest_distance": None}
    threshold = data_forget_threshold(forget_set.forget.images, forget_set.retain.images)
    distances = nearest_distance(images, forget_set.forget.images)
    return {**rate_fields("forget_rate", data_forget_hits(distances, threshold), len(images)), "forget_mode": "data",
            "forget_threshold": threshold, "forget_nearest_distance": float(distances.median())}


def _retain_applies(context: EvalContext) -> str | None:
    if not (context.checkpoint.conditional or context.checkpoint.text_conditional):
        return "unconditional model: samples have no condition to check"
    if not context.labelled:
        return "unlabelled data: no classifier"
    return None


@register_metric("retain", keys={
    "retain_accuracy": "share of retained-condition samples the domain classifier assigns to their condition "
                       "(text-to-image: samples for retained classes' prompts assigned to the prompted class)",
    **rate_keys("retain_accuracy", "retained-condition samples scored"),
}, applies=_retain_applies)
def retain(context: EvalContext) -> dict[str, Any]:
    from unlearnctl.metrics.forget import retain_hits

    samples = context.samples
    images = samples.images[samples.retain]
    return rate_fields("retain_accuracy", retain_hits(images, samples.labels[samples.retain], context.classifier), len(images))


@register_metric("membership", keys={
    "membership_auc": "ROC AUC of the loss-based membership attack, forget images vs matched held-out images (0.5 = no leakage)",
    **interval_keys("membership_auc", "percentile bootstrap (members and non-members resampled separately)"),
    "membership_auc_std": "standard deviation of the AUC over the audit's noise repeats",
    "membership_balanced_accuracy": "best balanced accuracy (TPR + TNR)/2 of the attack over thresholds",
    **interval_keys("membership_balanced_accuracy", "percentile bootstrap"),
    "membership_tpr_at_1pct_fpr": "attack TPR at 1% FPR (null below 100 non-members)",
    **rate_keys("membership_tpr_at_1pct_fpr", "members audited"),
    "membership_tpr_at_1pct_fpr_unsupported_reason": "why membership_tpr_at_1pct_fpr is null (too few non-members)",
    "membership_epsilon_lb": "empirical ε lower bound (Clopper–Pearson, threshold chosen on a separate half); "
                             "null when the test sizes cannot give a bound above 0",
    "membership_epsilon_lb_unsupported_reason": "why membership_epsilon_lb is null",
    "membership_epsilon_lb_max": "the largest ε bound the audit's test sizes can give (perfect separation)",
    "membership_epsilon_lb_capped": "whether membership_epsilon_lb reached membership_epsilon_lb_max (the sample size set it)",
    "membership_epsilon_confidence": "confidence level of membership_epsilon_lb",
    "membership_loss_ratio": "SISS membership loss ratio: mean denoising loss of forget images / of non-members",
    "membership_members": "distinct forget images audited",
    "membership_nonmembers": "held-out images audited",
}, applies=_no_forget_set, uses_samples=False)
def membership(context: EvalContext) -> dict[str, Any]:
    from unlearnctl.metrics.membership import membership_audit

    result = membership_audit(context.unet, context.checkpoint, context.forget_set, context.split, context.audit,
                              progress=context.progress, reference=context.reference)
    context.details["membership"] = result.pop("details")
    return result


def _clip_applies(context: EvalContext) -> str | None:
    if not context.checkpoint.text_conditional:
        return "not a text-to-image model: its samples have no prompts"
    if context.config.clip_model is None:
        return "no --clip-model: the CLIP score needs local CLIP weights (nothing is downloaded)"
    return None


@register_metric("clip", keys={
    "clip_score": "text-to-image: mean CLIP score 100·max(cos(image, prompt), 0) of retained-prompt samples against their prompts",
    **interval_keys("clip_score", "percentile bootstrap (samples resampled)"),
    "clip_score_n": "retained-prompt samples behind clip_score",
    "clip_score_forget": "text-to-image: mean CLIP score of forget-prompt samples against their prompts (falls as a concept is erased)",
    **interval_keys("clip_score_forget", "percentile bootstrap (samples resampled)"),
    "clip_score_forget_n": "forget-prompt samples behind clip_score_forget",
}, applies=_clip_applies)
def clip(context: EvalContext) -> dict[str, Any]:
    from unlearnctl.metrics.clip import clip_scores
    from unlearnctl.metrics.intervals import bootstrap, percentile_interval

    samples, config = context.samples, context.config
    values: dict[str, Any] = {}
    for key, mask in (("clip_score", samples.retain), ("clip_score_forget", samples.forget)):
        rows = torch.nonzero(mask).flatten().tolist()
        if not rows:
            values.update({key: None, f"{key}_ci95_low": None, f"{key}_ci95_high": None, f"{key}_n": 0})
            continue
        scores = clip_scores(context.clip, samples.images[rows], [samples.prompts[i] for i in rows]).double().numpy()
        low, high = percentile_interval(bootstrap(lambda s: float(s.mean()), (scores,), config.bootstrap_rounds, config.seed))
        values.update({key: float(scores.mean()), f"{key}_ci95_low": low, f"{key}_ci95_high": high, f"{key}_n": len(rows)})
    context.details["clip"] = {"model": context.clip.path, "weights_sha256": context.clip.weights_sha256,
                               "score": "100 * max(cos(image, prompt), 0)"}
    return values


# --------------------------------------------------------------------------------------------- resolution


def recorded_forget_spec(checkpoint: "Checkpoint") -> ForgetSpec | None:
    """The forget specification of the newest lineage entry that has one (what was unlearned)."""
    for entry in reversed(checkpoint.lineage):
        block = entry.get("forget") if isinstance(entry, dict) else None
        spec = block.get("spec") if isinstance(block, dict) else None
        if isinstance(spec, dict):
            forget_spec = ForgetSpec.from_dict(spec)
            if not forget_spec.empty:
                return forget_spec
    return None


def _plan(context: EvalContext) -> tuple[list[str], dict[str, str]]:
    """The groups to run and the reasons others are skipped; an explicitly requested group that
    cannot run is bad input."""
    requested = context.config.metrics
    run, skipped = [], {}
    for name, metric in METRICS.items():
        if requested is not None and name not in requested:
            skipped[name] = "not requested"
            continue
        reason = metric.applies(context)
        if reason is None:
            run.append(name)
        elif requested is not None:
            raise BadInputError(f"metric {name!r} cannot be computed here: {reason}")
        else:
            skipped[name] = reason
    return run, skipped


def planned_keys(run: list[str]) -> set[str]:
    """Result keys that will hold numbers (what ``--gate`` may name)."""
    keys = {key for name in run for key in METRICS[name].keys}
    return keys | {"num_samples", "num_retain_samples", "num_forget_samples"}


def _check_reference_data(reference: "Checkpoint", split: "DataSplit") -> None:
    """The audit reference must not have trained on the held-out images or on the full training set."""
    require(reference.data.get("heldout_fingerprint") == split.description.get("heldout_fingerprint"),
            "the audit reference was trained on another train/held-out split, so it may have seen the non-members; "
            "use a model trained on the same data source and split")
    from unlearnctl.provenance import ROOT_COMMANDS

    roots = [e for e in reference.lineage if isinstance(e, dict) and e.get("command") in ROOT_COMMANDS]
    trained_on = roots[-1].get("data_fingerprint") if roots else None  # the newest from-scratch training
    require(trained_on not in (None, split.description["fingerprint"]),
            "the audit reference was trained on the full training set (forget images included) or records no training "
            "data; use a model trained without the forget set, e.g. `unlearnctl unlearn --method retrain`")


def _budget(context: EvalContext) -> tuple[int, AuditConfig]:
    """The images per UNet call and the audit's parameters, scaled to this evaluation.

    * batch: ``--sample-batch-size``, else :func:`unlearnctl.sampling.auto_batch_size` (from the model's
      parameter count and resolution, at most 1,000);
    * audit: ``--audit-samples``, else ``min(1000, --num-samples)`` members and non-members, so a small
      evaluation gets a small audit; its bootstrap uses ``--bootstrap-rounds``.
    """
    from dataclasses import replace

    from unlearnctl.metrics.membership import MAX_IMAGES
    from unlearnctl.sampling import auto_batch_size

    config = context.config
    batch = config.sample_batch_size or auto_batch_size(context.unet, context.checkpoint.unet_config["sample_size"])
    audit = replace(config.audit, max_images=config.audit.max_images or min(MAX_IMAGES, config.num_samples),
                    batch_size=config.audit.batch_size or batch, bootstrap_rounds=config.bootstrap_rounds)
    return batch, audit


def _needs_classifier(context: EvalContext, run: list[str]) -> bool:
    forget_class = "forget" in run and context.forget_set.mode == "class"
    return "retain" in run or forget_class or ("quality" in run and context.config.feature_extractor == "domain-classifier")


def _sample_plan(checkpoint: "Checkpoint", forget_set: ForgetSet | None, num_samples: int) -> tuple[torch.Tensor | None, list[int]]:
    """Labels to generate (balanced over conditions) and the forget conditions."""
    from unlearnctl.metrics.forget import forget_conditions

    if not checkpoint.conditional:
        return None, []
    forget_ids = forget_conditions(checkpoint, forget_set) if forget_set is not None else []
    conditions = sorted(set(range(checkpoint.num_classes)) | set(forget_ids))
    require(num_samples >= len(conditions), f"--num-samples {num_samples} is below the {len(conditions)} conditions to sample; "
            f"use at least {len(conditions)}")
    counts = [num_samples // len(conditions) + (i < num_samples % len(conditions)) for i in range(len(conditions))]
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in zip(conditions, counts)])
    return labels, forget_ids


def _masks(checkpoint: "Checkpoint", forget_set: ForgetSet | None, labels: torch.Tensor | None, n: int, forget_ids: list[int]):
    if labels is None:
        everything = torch.ones(n, dtype=torch.bool)
        return everything, everything.clone()
    retained = labels < checkpoint.num_classes  # the real classes (not the null class)
    if forget_set is not None and forget_set.class_ids:
        retained &= ~torch.isin(labels, torch.tensor(forget_set.class_ids))
    return retained, torch.isin(labels, torch.tensor(forget_ids, dtype=torch.long))


# --------------------------------------------------------------------------------------------- entry point


@dataclass
class Evaluation:
    """The result dict plus the samples it was computed on (for grids and ``--save-samples``)."""

    result: dict[str, Any]
    samples: Samples
    real_retain: ImageSet

    def save_samples(self, folder: str | Path) -> Path:
        """Write ``retain/``, ``forget/`` and ``real/`` PNG folders and ``samples.npz``.

        ``torch_fidelity.calculate_metrics(input1=folder/retain, input2=folder/real,
        feature_extractor=<provenance.extractor.fidelity_name>, feature_extractor_weights_path=<...path>)``
        reproduces ``fid``/``kid``/``precision``/``recall``.
        """
        from unlearnctl.sampling import save_npz, save_png_folder

        require(len(self.samples.images) > 0, "no samples were generated (the membership audit alone needs none)")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_png_folder(self.samples.images[self.samples.retain], None, folder / "retain")
        if bool(self.samples.forget.any()):
            save_png_folder(self.samples.images[self.samples.forget], None, folder / "forget")
        save_png_folder(self.real_retain.images, None, folder / "real")
        save_npz(self.samples.images, self.samples.labels, folder / "samples.npz")
        return folder

    def grid_images(self, per_condition: int = 10) -> dict[str, torch.Tensor]:
        """The images of the sample grids: ``"retained"`` (a row of ``per_condition`` per class, padded with black;
        unconditional: up to ``per_condition²``) and, when a forget condition was sampled, ``"forget"`` (conditional
        models only: an unconditional model's forget-rate samples are the same images as its retained grid)."""
        samples = self.samples
        retained = torch.nonzero(samples.retain).flatten()
        if samples.labels is not None:
            rows = [retained[samples.labels[retained] == c][:per_condition] for c in samples.labels[retained].unique()]
            rows = [torch.cat([r, r.new_full((per_condition - len(r),), -1)]) for r in rows]
            index = torch.cat(rows) if rows else retained[:0]
            images = torch.where((index >= 0).view(-1, 1, 1, 1), samples.images[index.clamp(min=0)], torch.zeros(()))
        else:
            images = samples.images[retained][: per_condition * per_condition]
        grids = {"retained": images}
        if self.result["provenance"].get("forget") is not None and samples.labels is not None and bool(samples.forget.any()):
            grids["forget"] = samples.images[samples.forget][: per_condition * per_condition]
        return grids

    def grid_pngs(self, per_condition: int = 10) -> dict[str, bytes]:
        """The sample grids as PNG bytes, titled with the model and the condition, each row labelled with its class."""
        from unlearnctl.sampling import grid_png

        model = Path(str((self.result["provenance"].get("model") or {}).get("path") or "model")).stem
        forget = (self.result["provenance"].get("forget") or {}).get("spec") or {}
        samples, names = self.samples, list(self.real_retain.class_names or [])
        pngs = {}
        for kind, images in self.grid_images(per_condition).items():
            if not len(images):
                continue
            row_labels = None
            if kind == "retained" and samples.labels is not None:
                retained = samples.labels[samples.retain].unique().tolist()
                row_labels = [names[i] if 0 <= i < len(names) else str(i) for i in retained]
                title = f"{model}: retained classes, one row each"
            elif kind == "retained":
                title = f"{model}: samples (unconditional)"
            else:
                what = (f"class {', '.join(map(str, forget['classes']))}" if forget.get("classes") else
                        f"prompt {', '.join(repr(p) for p in forget['prompts'])}" if forget.get("prompts") else "the forget set")
                title = f"{model}: forget condition ({what})"
            pngs[kind] = grid_png(images, nrow=per_condition, title=title, row_labels=row_labels)
        return pngs

    def grids(self, path: str | Path, per_condition: int = 10) -> list[Path]:
        """PNG grids: ``path`` = retained conditions (a row per class), ``<stem>-forget.png`` = forget condition."""
        from unlearnctl.checkpoint import atomic_write_bytes

        require(len(self.samples.images) > 0, "no samples were generated (the membership audit alone needs none)")
        path = Path(path)
        pngs = self.grid_pngs(per_condition)
        atomic_write_bytes(path, pngs["retained"])
        written = [path]
        if "forget" in pngs:
            forget_path = path.with_name(f"{path.stem}-forget{path.suffix}")
            atomic_write_bytes(forget_path, pngs["forget"])
            written.append(forget_path)
        return written


def run_evaluation(
    checkpoint: "Checkpoint",
    forget_spec: ForgetSpec | None = None,
    config: EvalConfig | None = None,
    progress: ProgressFn = None,
    *,
    split: "DataSplit | None" = None,
    gates: list[str] | None = None,
    baseline: dict[str, Any] | None = None,
) -> Evaluation:
    """:func:`evaluate`, also returning the samples. ``gates`` are validated (not checked) before sampling."""
    from unlearnctl.data import check_compatible, load_recorded_data
    from unlearnctl.metrics.classifier import describe, resolve_classifier
    from unlearnctl.metrics.fidelity import classifier_space, inception_space
    from unlearnctl.training import resolve_device

    config = config or EvalConfig()
    from unlearnctl.integrity import require_finite_weights

    require_finite_weights(checkpoint.state_dict, checkpoint.path or "the model")  # no figure, no gate, from a broken model
    started = time.perf_counter()
    timing: dict[str, float] = {}
    text = checkpoint.text_conditional  # prompts instead of labels (metrics/text.py)

    # 1) resolve: data, forget set, plan, classifier, feature space — all failures before sampling
    split = split or load_recorded_data(checkpoint.data)
    if text:
        from unlearnctl.metrics.text import resolve_text_forget, text_sample_plan
        from unlearnctl.text_unlearning import text_split

        split = text_split(checkpoint, split)
    else:
        check_compatible(split.description, checkpoint.unet_config, checkpoint.conditional, checkpoint.num_classes)
        require(config.sampler != "pipeline", "--sampler pipeline is for text-to-image models; choose ddim or ddpm")
        require(checkpoint.conditional or config.guidance == 1.0, "guidance needs a class-conditional model; drop --guidance")
        require(checkpoint.null_class is not None or config.guidance == 1.0, NO_NULL_CLASS_GUIDANCE)
        require(config.concept_class is None, "--concept-class is for text-to-image models (the class of a --forget-prompt)")
        require(forget_spec is None or not forget_spec.prompts,
                "--forget-prompt is for text-to-image models; forget a class with --forget-class")
    forget_source = "given" if forget_spec is not None and not forget_spec.empty else None
    if forget_source is None:
        forget_spec = recorded_forget_spec(checkpoint)
        forget_source = "lineage" if forget_spec is not None else None
    if forget_source:
        forget_set = resolve_text_forget(forget_spec, split, config.concept_class) if text else resolve_forget(forget_spec, split)
    else:
        forget_set = None
        require(config.concept_class is None, "--concept-class names the class of a --forget-prompt concept; give --forget-prompt TEXT")
    device = resolve_device(config.device)
    context = EvalContext(checkpoint, checkpoint.build_unet(device).eval(), split, forget_set, config, device, progress=progress)
    context.sample_batch_size, context.audit = _budget(context)
    run, skipped = _plan(context)
    require(run, "no metric can be computed for this model: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    sampling = any(METRICS[name].uses_samples for name in run)
    plan = text_sample_plan(context.real_retain, forget_set, config.num_samples) if sampling and text else None
    if text:
        labels, forget_ids = (plan.labels if plan is not None else None), []
    else:
        labels, forget_ids = _sample_plan(checkpoint, forget_set, config.num_samples) if sampling else (None, [])
    if gates:
        from unlearnctl.metrics.gates import parse_gates

        parse_gates(gates, planned_keys(run), baseline)
    if config.audit_reference and "membership" in run:
        from unlearnctl.checkpoint import load_checkpoint
        from unlearnctl.metrics.membership import check_reference

        context.reference = load_checkpoint(config.audit_reference)
        require_finite_weights(context.reference.state_dict, config.audit_reference)
        check_reference(checkpoint, context.reference)
        _check_reference_data(context.reference, split)
    if _needs_classifier(context, run):
        require(context.labelled, "the domain classifier needs labelled data (class sub-folders or npz labels); "
                "for quality metrics use --feature-extractor inception-v3-compat --inception-weights PATH")
        tick = time.perf_counter()
        context.classifier = resolve_classifier(split, config.classifier, config.classifier_cache, progress)
        timing["classifier_s"] = time.perf_counter() - tick
    if "quality" in run:
        context.feature_space = (classifier_space(context.classifier) if config.feature_extractor == "domain-classifier"
                                 else inception_space(config.inception_weights))
    if "clip" in run:
        from unlearnctl.metrics.clip import load_clip

        context.clip = load_clip(config.clip_model, device)

    # 2) generate once
    from unlearnctl.diffusion import sample_images

    tick = time.perf_counter()
    if plan is not None:
        from unlearnctl.metrics.text import sample_prompt_rows

        images = sample_prompt_rows(context.unet, checkpoint, plan.prompts, steps=config.steps, sampler=config.sampler,
                                    guidance=config.guidance, seed=config.seed, batch_size=context.sample_batch_size,
                                    precision=config.precision, progress=progress)
        context.details["prompts"] = {"forget": sorted(set(p for p, f in zip(plan.prompts, plan.forget.tolist()) if f)),
                                      "retained": sorted(set(p for p, f in zip(plan.prompts, plan.retain.tolist()) if f))}
    elif sampling:  # under accelerate launch: each process generates a share, every process gets all
        images = sample_images(context.unet, checkpoint.scheduler_config, num_images=None if labels is not None else config.num_samples,
                               labels=labels, null_class=checkpoint.null_class, steps=config.steps, sampler=config.sampler,
                               guidance=config.guidance, seed=config.seed, batch_size=context.sample_batch_size, progress=progress,
                               precision=config.precision)
    else:  # nothing scores samples (e.g. --metric membership): generate none
        size, channels = ((split.description["resolution"], split.description["channels"]) if text else
                          (checkpoint.unet_config["sample_size"], checkpoint.unet_config["in_channels"]))
        images = torch.zeros((0, channels, size, size))
        labels = torch.zeros(0, dtype=torch.long) if checkpoint.conditional else None
    if plan is not None:
        retained, forgotten = plan.retain, plan.forget
    else:
        retained, forgotten = _masks(checkpoint, forget_set, labels, len(images), forget_ids)
    context.samples = Samples(images, labels, retained, forgotten, plan.prompts if plan is not None else None)
    timing["sampling_s"] = time.perf_counter() - tick

    # 3) score
    result: dict[str, Any] = {"schema": SCHEMA}
    result.update({key: None for metric in METRICS.values() for key in metric.keys})
    result.update(num_samples=len(images), num_retain_samples=int(retained.sum()),
                  num_forget_samples=int(forgotten.sum()) if forget_set is not None else 0)
    for name in run:
        tick = time.perf_counter()
        values = METRICS[name].compute(context)
        unknown = set(values) - set(METRICS[name].keys)
        require(not unknown, f"metric {name!r} returned unregistered keys {sorted(unknown)}")
        result.update(values)
        timing[f"{name}_s"] = time.perf_counter() - tick
    timing["scoring_s"] = sum(v for k, v in timing.items() if k not in ("sampling_s", "classifier_s"))
    timing["total_s"] = time.perf_counter() - started

    # 4) provenance
    result["provenance"] = _provenance(context, run, skipped, forget_source, timing,
                                       describe(context.classifier) if context.classifier else None)
    return Evaluation(result, context.samples, context.real_retain)


def evaluate(
    checkpoint: "Checkpoint",
    forget_spec: ForgetSpec | None = None,
    config: EvalConfig | None = None,
    progress: ProgressFn = None,
    *,
    split: "DataSplit | None" = None,
) -> dict[str, Any]:
    """Score ``checkpoint``: quality, forget rate, retain accuracy and the membership audit.

    Args:
        checkpoint: the model (its data description locates the data; its lineage the forget set).
        forget_spec: what was forgotten; ``None`` = the newest lineage entry with a ``forget`` block,
            and without one only quality is measured.
        config: sampling and metric parameters (:class:`EvalConfig`).
        progress: progress callback (sampling, classifier training, audit).
        split: data to use instead of the recorded data (must match the model's shape).

    Returns:
        A flat dict: ``schema``, every registered metric key (``None`` when not measured),
        ``num_samples``/``num_retain_samples``/``num_forget_samples`` and ``provenance``
        (``docs/metrics.md`` documents every key).
    """
    return run_evaluation(checkpoint, forget_spec, config, progress, split=split).result


SEED_KEYS = ("seed", "curve_seed")  # parameters that only seed randomness (the attack curve's: its samples' noise)
RESULT_KEYS = ("prepared",)  # what a run found before its first step (SalUn's salient-weight count), not what it was asked


def params_digest(params: Any) -> str:
    """sha256 (16 hex digits) of a lineage entry's parameters without any :data:`SEED_KEYS` or
    :data:`RESULT_KEYS` key: runs that differ only in seeds share it (``compare`` aggregates them)."""
    import hashlib
    import json

    def seedless(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: seedless(v) for k, v in value.items() if k not in SEED_KEYS + RESULT_KEYS}
        if isinstance(value, list):
            return [seedless(v) for v in value]
        return value

    return hashlib.sha256(json.dumps(seedless(params), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _provenance(context: EvalContext, run, skipped, forget_source, timing, classifier) -> dict[str, Any]:
    import diffusers
    import torch_fidelity

    import unlearnctl
    from unlearnctl.checkpoint import now_utc, reproducible

    checkpoint, config, space = context.checkpoint, context.config, context.feature_space
    lineage = [{"command": e.get("command"), "method": e.get("method"), "seed": e.get("seed"),
                "forget": (e.get("forget") or {}).get("spec") if isinstance(e.get("forget"), dict) else None,
                "parent_sha256": e.get("parent_sha256"), "created": e.get("created"),
                "params_digest": params_digest(e.get("params"))}
               for e in checkpoint.lineage if isinstance(e, dict)]
    extractor = None
    if space is not None:
        extractor = {"name": space.name, "fidelity_name": space.fidelity_name, "weights_sha256": space.weights_sha256,
                     **space.provenance}
    return {
        "created": now_utc(),
        "model": {"path": str(checkpoint.path) if checkpoint.path else None, "sha256": checkpoint.sha256,
                  "conditional": checkpoint.conditional, "text_conditional": checkpoint.text_conditional, "lineage": lineage},
        "data": {k: context.split.description.get(k) for k in ("source", "fingerprint", "num_train", "num_heldout", "resolution", "channels")},
        "forget": None if context.forget_set is None else {**context.forget_set.describe(), "source": forget_source},
        "sampler": {"name": config.sampler, "steps": config.steps, "guidance": config.guidance, "seed": config.seed,
                    "batch_size": context.sample_batch_size, "num_samples": config.num_samples},
        "extractor": extractor,
        "classifier": classifier,
        "metrics_run": run,
        "skipped": skipped,
        "details": context.details,
        "config": config.to_dict(),
        "device": str(context.device),
        "timing_s": None if reproducible() else {k: round(v, 3) for k, v in timing.items()},
        "versions": {"unlearnctl": unlearnctl.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "torch_fidelity": torch_fidelity.__version__, "python": platform.python_version()},
    }
