"""Membership audit: does the model still treat the forget images as training data? (docs/metrics.md)

Adapted from the VFLGAN paper's privacy audit (arXiv 2404.09722): run a membership-inference attack and
report its accuracy (0.5 = no leakage) with the spread over repeats. Here the attack is loss-based, the
standard one for diffusion models: a training image is denoised better than an unseen one.

1. **Members** are the distinct forget images (copies of one canary count once); **non-members** are
   held-out images the model never saw, matched to the forget set: held-out images of the forget set's
   classes when there are any (so ``retrain`` scores ≈ 0.5 on a forgotten class), else every held-out
   image. Both sides are capped at ``max_images`` (seeded subset).
2. **Score.** For each repeat ``r`` and fixed timestep ``t_k`` one noise image ``ε_rk`` is drawn and
   *shared by every image*, so scores differ only through the images:
   ``L_r(x) = 1/K Σ_k ||ε_θ(γ_{t_k} x + σ_{t_k} ε_rk, t_k, c) − ε_rk||²`` (mean over pixels; ``c`` the
   image's class for conditional models, the null class when unknown; a model without a null class
   refuses images of unknown class; a text-to-image model: on the image's VAE latent, ``c`` its caption's
   embedding). The attack score is
   ``−L(x)`` with ``L = mean_r L_r``: lower loss → "member".
3. **Attack figures** on ``−L``: ROC AUC, balanced accuracy (best threshold: max over τ of
   ``(TPR + TNR)/2``), TPR at 1% FPR, and the AUC's standard deviation over the ``R`` repeats (each
   repeat scored alone) — VFLGAN's "spread over repeats". AUC and balanced accuracy carry percentile
   bootstrap intervals (members and non-members resampled separately, :mod:`.intervals`); the TPR its
   member count and a Wilson interval, and ``null`` with a reason below 100 non-members (where 1% FPR
   allows no false positive).
4. **Empirical ε lower bound** (Jagielski et al. 2020, Nasr et al. 2021): ε-DP forces every test to
   satisfy ``TPR ≤ e^ε FPR`` and ``TNR ≤ e^ε FNR``. Members and non-members are split in half (seeded);
   the threshold and direction maximising the point estimate are chosen on the first half; on the
   second half one-sided Clopper–Pearson bounds at level ``α/2`` each (``α = 1 − confidence``) give
   ``ε ≥ max(0, log(TPR_lo / FPR_hi), log(TNR_lo / FNR_hi))`` — valid with probability ≥ ``confidence``.
   The bound is per forget *image*; a canary inserted ``K`` times is audited as one group. The largest
   bound the test sizes allow (perfect separation) is reported beside it; a bound at that ceiling is
   marked capped, and when the ceiling is 0 the bound is ``null`` with a reason.
5. **SISS membership loss ratio**: ``mean L(members) / mean L(non-members)``; ≈ 1 when the forget images
   look unseen, < 1 while they are still fitted better than unseen images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unlearnctl.data import NO_CLASS_FOR_FORGET_IMAGES, ImageSet
from unlearnctl.diffusion import NoiseSchedule, per_sample_mse
from unlearnctl.errors import require
from unlearnctl.metrics.intervals import BOOTSTRAP_ROUNDS, bootstrap, percentile_interval, rate_fields
from unlearnctl.progress import ProgressFn, report

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import DataSplit, ForgetSet
    from unlearnctl.denoisers import Denoiser

AUDIT_TIMESTEPS = (25, 50, 100, 150, 200, 300, 400)  # of 1000: where train/unseen losses differ most
TARGET_FPR = 0.01  # the false-positive rate of membership_tpr_at_1pct_fpr
MIN_NONMEMBERS_TPR = 100  # below this, "TPR at 1% FPR" allows no false positive at all: not reported
MAX_IMAGES = 1000  # default cap on members and on non-members


@dataclass
class AuditConfig:
    """Parameters of the membership audit (recorded in the evaluation's provenance)."""

    timesteps: tuple[int, ...] = AUDIT_TIMESTEPS  # fixed timesteps t_k of the loss
    repeats: int = 4  # shared-noise draws ε_rk; the AUC's spread is over these
    confidence: float = 0.95  # confidence level of the ε lower bound
    max_images: int | None = None  # cap on members and on non-members (seeded subset); None = MAX_IMAGES
    # (evaluate: min(MAX_IMAGES, --num-samples), so a small evaluation gets a small audit)
    batch_size: int | None = None  # images per UNet call; None = sampling.auto_batch_size (from the model's size)
    seed: int = 0  # seeds the noise, subsets, the ε split and the bootstrap
    bootstrap_rounds: int = BOOTSTRAP_ROUNDS  # rounds of the AUC / balanced-accuracy bootstrap intervals

    def __post_init__(self):
        self.timesteps = tuple(int(t) for t in self.timesteps)
        require(len(self.timesteps) >= 1 and all(t >= 0 for t in self.timesteps), f"audit timesteps must be non-negative, got {self.timesteps}")
        require(self.repeats >= 1, f"audit repeats must be at least 1, got {self.repeats}")
        require(0.5 <= self.confidence < 1, f"audit confidence must be in [0.5, 1), got {self.confidence}")
        require(self.max_images is None or self.max_images >= 1, f"audit samples must be at least 1, got {self.max_images}")
        require(self.batch_size is None or self.batch_size >= 1, f"audit batch size must be at least 1, got {self.batch_size}")
        require(self.bootstrap_rounds >= 1, f"bootstrap rounds must be at least 1, got {self.bootstrap_rounds}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "timesteps": list(self.timesteps)}


# --------------------------------------------------------------------------------------------- the sets


def unique_images(images: ImageSet) -> ImageSet:
    """Drop repeated images (same uint8 pixels), keeping the first occurrence's label."""
    _, inverse = torch.unique(_pixels(images.images), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(inverse), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(inverse)), reduce="amin")
    return images.subset(first.sort().values)


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).flatten(1)


def audit_sets(forget_set: "ForgetSet", split: "DataSplit") -> tuple[ImageSet, ImageSet, str]:
    """``(members, non_members, source)``: distinct forget images and matched held-out images.

    Held-out images that also occur in the train split (exact duplicates) are not non-members and are dropped.
    """
    members = unique_images(forget_set.forget)
    train = {bytes(row.numpy()) for row in _pixels(split.train.images)}
    unseen = torch.tensor([bytes(row.numpy()) not in train for row in _pixels(split.heldout.images)], dtype=torch.bool)
    heldout = split.heldout.subset(unseen)
    require(len(heldout) > 0, "the membership audit needs held-out images (non-members) that are not in the train split; the data has none")
    classes = sorted({int(c) for c in members.labels.tolist() if c >= 0}) if members.labels is not None else []
    if classes and heldout.labels is not None:
        same = torch.isin(heldout.labels, torch.tensor(classes))
        if int(same.sum()) >= 2:
            return members, heldout.subset(same), "heldout-same-class"
    return members, heldout, "heldout-all"


def _cap(images: ImageSet, limit: int, generator: torch.Generator) -> ImageSet:
    if len(images) <= limit:
        return images
    return images.subset(torch.randperm(len(images), generator=generator)[:limit].sort().values)


# --------------------------------------------------------------------------------------------- losses


@torch.inference_mode()
def denoising_losses(
    unet: torch.nn.Module,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    timesteps: tuple[int, ...],
    repeats: int,
    seed: int,
    batch_size: int = 1000,
    progress: ProgressFn = None,
    model: "Denoiser | None" = None,
) -> torch.Tensor:
    """Per-image loss ``L_r(x)`` (mean over the timesteps), shape ``[repeats, N]``, with shared noise.

    The same seed gives the same noise for every call, so members and non-members (scored in separate
    calls) see identical ``ε_rk``. ``model``: the denoiser whose space ``images`` are in and whose conditions
    ``labels`` are (a text-to-image model: VAE latents and prompt embeddings ``[N, L, D]``); default: ``unet``
    on pixels, conditioned on class labels.
    """
    require(all(t < schedule.num_train_timesteps for t in timesteps),
            f"audit timesteps must be below {schedule.num_train_timesteps}, got {max(timesteps)}")
    from unlearnctl.denoisers import PixelDenoiser

    model = model or PixelDenoiser(unet, schedule)  # the loss in the model's own parameterisation (ε, v or x₀)
    device = next(unet.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((repeats, len(timesteps), *images.shape[1:]), generator=generator)  # R×K×C×H×W
    losses = torch.zeros(repeats, len(images))
    total = repeats * len(timesteps)
    for r in range(repeats):
        for k, t in enumerate(timesteps):
            for start in range(0, len(images), batch_size):
                x = images[start:start + batch_size].to(device)  # B×C×H×W
                t_batch = torch.full((len(x),), t, dtype=torch.long)
                eps = noise[r, k].to(device).expand_as(x)  # shared ε_rk
                m_t = schedule.add_noise(x, eps, t_batch)
                c = None if labels is None else labels[start:start + batch_size]
                losses[r, start:start + len(x)] += per_sample_mse(model.predict(m_t, t_batch, c),
                                                                  schedule.target(t_batch, x0=x, eps=eps)).cpu()
            report(progress, "audit", r * len(timesteps) + k + 1, total)
    return losses / len(timesteps)


def audit_losses(unet: torch.nn.Module, checkpoint: "Checkpoint", images: ImageSet, labels: torch.Tensor | None,
                 schedule: NoiseSchedule, **common: Any) -> torch.Tensor:
    """:func:`denoising_losses` of ``images`` under ``checkpoint``'s ``unet``: on pixels conditioned on ``labels``,
    or for a text-to-image model on VAE latents conditioned on each image's caption embedding (``labels`` unused)."""
    if not checkpoint.text_conditional:
        return denoising_losses(unet, schedule, images.images, labels, **common)
    from unlearnctl.denoisers import denoiser_for
    from unlearnctl.runtime import Runtime

    require(images.captions is not None, "the membership audit of a text-to-image model needs each image's caption")
    denoiser = denoiser_for(checkpoint, Runtime(next(unet.parameters()).device), network=unet)
    step = common.get("batch_size") or 1000
    with torch.inference_mode():
        latents = torch.cat([denoiser.encode(images.images[i:i + step]).cpu() for i in range(0, len(images), step)])  # N×c×h×w
        embeddings = torch.cat([denoiser.embed(images.captions[i:i + step]).cpu() for i in range(0, len(images), step)])  # N×L×D
    return denoising_losses(unet, schedule, latents, embeddings, model=denoiser, **common)


def _condition(images: ImageSet, checkpoint: "Checkpoint") -> torch.Tensor | None:
    if not checkpoint.conditional:
        return None
    labels = images.labels.clone() if images.labels is not None else torch.full((len(images),), -1, dtype=torch.long)
    unknown = (labels < 0) | (labels >= checkpoint.num_classes)
    require(checkpoint.null_class is not None or not bool(unknown.any()), NO_CLASS_FOR_FORGET_IMAGES)
    if checkpoint.null_class is not None:
        labels[unknown] = checkpoint.null_class  # unknown class → null
    return labels


# --------------------------------------------------------------------------------------------- statistics


def attack_figures(member_scores: np.ndarray, nonmember_scores: np.ndarray, target_fpr: float = TARGET_FPR) -> dict[str, float]:
    """ROC AUC, best balanced accuracy and TPR at ``target_fpr`` of "score ≥ τ → member"."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    s = np.r_[member_scores, nonmember_scores]
    fpr, tpr, _ = roc_curve(y, s)
    return {
        "auc": float(roc_auc_score(y, s)),
        "balanced_accuracy": float(np.max((tpr + 1 - fpr) / 2)),
        "tpr_at_fpr": float(np.max(tpr[fpr <= target_fpr + 1e-12])),
    }


def rank_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC AUC by the Mann–Whitney rank sum (ties count ½): ``(R_m − m(m+1)/2) / (m·n)``; equals
    ``sklearn.metrics.roc_auc_score`` and costs one sort (the bootstrap calls it ``B`` times)."""
    from scipy.stats import rankdata

    m, n = len(member_scores), len(nonmember_scores)
    ranks = rankdata(np.r_[member_scores, nonmember_scores])
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def balanced_accuracy(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Best balanced accuracy ``max_τ (TPR + 1 − FPR) / 2`` of "score ≥ τ → member" over every threshold
    (ties decided together); equals :func:`attack_figures`'s, at one sort (the bootstrap calls it ``B`` times)."""
    m, n = len(member_scores), len(nonmember_scores)
    scores = np.r_[member_scores, nonmember_scores]
    is_member = np.r_[np.ones(m), np.zeros(n)]
    order = np.argsort(-scores, kind="mergesort")
    scores, is_member = scores[order], is_member[order]
    threshold_ends = np.r_[scores[1:] != scores[:-1], True]  # the last row of each group of equal scores
    tpr = np.cumsum(is_member)[threshold_ends] / m
    fpr = np.cumsum(1 - is_member)[threshold_ends] / n
    return float(max(0.5, np.max((tpr + 1 - fpr) / 2)))


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, target_fpr: float = TARGET_FPR) -> dict[str, Any]:
    """TPR at FPR ≤ ``target_fpr`` with its count and Wilson interval, or ``None`` with a reason.

    With ``n`` non-members the test may make ⌊target_fpr·n⌋ false positives; below
    :data:`MIN_NONMEMBERS_TPR` that is zero, and the figure would be "TPR at zero false positives".
    The Wilson interval treats the chosen threshold as fixed (the members are its trials).
    """
    key = "membership_tpr_at_1pct_fpr"
    n = len(nonmember_scores)
    if n < MIN_NONMEMBERS_TPR:
        return {key: None, f"{key}_count": None, f"{key}_n": None, f"{key}_ci95_low": None, f"{key}_ci95_high": None,
                f"{key}_unsupported_reason": f"{n} non-members allow no false positive at 1% FPR (needs at least "
                                             f"{MIN_NONMEMBERS_TPR}); raise --audit-samples or use more held-out data"}
    tpr = attack_figures(member_scores, nonmember_scores, target_fpr)["tpr_at_fpr"]
    return {**rate_fields(key, round(tpr * len(member_scores)), len(member_scores)), f"{key}_unsupported_reason": None}


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """One-sided Clopper–Pearson bounds ``(lower, upper)`` of a binomial rate, each at level ``alpha``."""
    from scipy.stats import beta

    lower = float(beta.ppf(alpha, successes, trials - successes + 1)) if successes > 0 else 0.0
    upper = float(beta.ppf(1 - alpha, successes + 1, trials - successes)) if successes < trials else 1.0
    return lower, upper


def epsilon_lower_bound(member_scores: np.ndarray, nonmember_scores: np.ndarray, confidence: float = 0.95,
                        seed: int = 0) -> dict[str, Any]:
    """Empirical ε lower bound (see the module docstring, step 4); 0 when the sets are too small."""
    rng = np.random.default_rng(seed)
    members, nonmembers = rng.permutation(member_scores), rng.permutation(nonmember_scores)
    m_half, n_half = len(members) // 2, len(nonmembers) // 2
    if min(m_half, n_half) < 1:
        return {"epsilon": 0.0, "threshold": None, "direction": None, "n_members": len(members) - m_half,
                "n_nonmembers": len(nonmembers) - n_half, "ceiling": 0.0, "capped": False}
    choose_m, test_m = members[:m_half], members[m_half:]
    choose_n, test_n = nonmembers[:n_half], nonmembers[n_half:]
    # 1) choose threshold and direction on the first half (point estimate, +0.5 smoothing against log 0)
    best = (-math.inf, None, None)
    values = np.unique(np.r_[choose_m, choose_n])
    for tau in (values[1:] + values[:-1]) / 2 if len(values) > 1 else values:  # midpoints: margin on both sides
        tp, fp = (choose_m >= tau).sum() + 0.5, (choose_n >= tau).sum() + 0.5
        fn, tn = (choose_m < tau).sum() + 0.5, (choose_n < tau).sum() + 0.5
        tpr, fpr, fnr, tnr = tp / (m_half + 1), fp / (n_half + 1), fn / (m_half + 1), tn / (n_half + 1)
        for direction, value in (("member-if-above", math.log(tpr / fpr)), ("member-if-below", math.log(tnr / fnr))):
            if value > best[0]:
                best = (value, float(tau), direction)
    _, tau, direction = best
    # 2) bound on the second half: each rate one-sided at α/2, so both hold with probability ≥ 1 − α
    alpha = (1 - confidence) / 2
    above_m, above_n = int((test_m >= tau).sum()), int((test_n >= tau).sum())
    if direction == "member-if-above":
        hit_lo, _ = clopper_pearson(above_m, len(test_m), alpha)  # TPR lower bound
        _, false_hi = clopper_pearson(above_n, len(test_n), alpha)  # FPR upper bound
    else:
        hit_lo, _ = clopper_pearson(len(test_n) - above_n, len(test_n), alpha)  # TNR lower bound
        _, false_hi = clopper_pearson(len(test_m) - above_m, len(test_m), alpha)  # FNR upper bound
    epsilon = math.log(hit_lo / false_hi) if hit_lo > 0 else 0.0
    ceiling = epsilon_ceiling(len(test_m), len(test_n), confidence)
    return {"epsilon": max(0.0, epsilon), "threshold": tau, "direction": direction,
            "n_members": len(test_m), "n_nonmembers": len(test_n), "ceiling": ceiling,
            "capped": ceiling > 0 and max(0.0, epsilon) >= ceiling - 1e-9}


def epsilon_ceiling(test_members: int, test_nonmembers: int, confidence: float = 0.95) -> float:
    """The largest ε lower bound ``m`` + ``n`` test images can give: perfect separation in either direction.

    ``max(log(TPR_lo(m/m) / FPR_hi(0/n)), log(TNR_lo(n/n) / FNR_hi(0/m)), 0)`` with the one-sided
    Clopper–Pearson bounds of :func:`epsilon_lower_bound`; e.g. 3.29 for 100 + 100 at 95%. A bound at this
    value says the sample size, not the model, set the figure.
    """
    if min(test_members, test_nonmembers) < 1:
        return 0.0
    alpha = (1 - confidence) / 2
    tpr_lo, _ = clopper_pearson(test_members, test_members, alpha)
    _, fpr_hi = clopper_pearson(0, test_nonmembers, alpha)
    tnr_lo, _ = clopper_pearson(test_nonmembers, test_nonmembers, alpha)
    _, fnr_hi = clopper_pearson(0, test_members, alpha)
    return max(0.0, math.log(tpr_lo / fpr_hi), math.log(tnr_lo / fnr_hi))


# --------------------------------------------------------------------------------------------- the audit


def check_reference(checkpoint: "Checkpoint", reference: "Checkpoint") -> None:
    """A calibration reference must see the same images and noise schedule as the audited model."""
    require(checkpoint.text_conditional == reference.text_conditional,
            "the audit reference must be a text-to-image model exactly when the audited model is one")
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
    require(all(checkpoint.scheduler_config.get(k) == reference.scheduler_config.get(k) for k in keys),
            "the audit reference has a different noise schedule; use a model trained with the same scheduler")
    for key in ("sample_size", "in_channels"):
        require(checkpoint.unet_config.get(key) == reference.unet_config.get(key),
                f"the audit reference's {key} {reference.unet_config.get(key)} differs from the model's {checkpoint.unet_config.get(key)}")


def _reference_conditions(members: ImageSet, nonmembers: ImageSet, audited: "Checkpoint",
                          reference: "Checkpoint") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Reference labels for members and non-members, treating both sides alike.

    A conditional reference is conditioned on each image's class (matched by name) only when the audited
    model is conditional and the reference knows the class of *every* audited image; otherwise on its null
    class for all — never the class for one side and the null class for the other.
    """
    if not reference.conditional:
        return None, None
    names = reference.data.get("class_names") or []

    def mapped(images: ImageSet) -> list[int | None]:
        if images.labels is None:
            return [None] * len(images)
        out = []
        for label in images.labels.tolist():
            name = images.class_names[label] if 0 <= label < len(images.class_names) else None
            out.append(names.index(name) if name in names else None)
        return out

    ids_m, ids_n = mapped(members), mapped(nonmembers)
    use_class = audited.conditional and None not in ids_m + ids_n
    require(use_class or reference.null_class is not None,
            "the audit reference has no null class and does not know the class of every audited image; "
            "give a reference trained on the same classes, or one with a null class")
    labels = [torch.tensor(ids if use_class else [reference.null_class] * len(ids), dtype=torch.long) for ids in (ids_m, ids_n)]
    return labels[0], labels[1]


def membership_audit(
    unet: torch.nn.Module,
    checkpoint: "Checkpoint",
    forget_set: "ForgetSet",
    split: "DataSplit",
    config: AuditConfig | None = None,
    progress: ProgressFn = None,
    reference: "Checkpoint | None" = None,
) -> dict[str, Any]:
    """Run the audit; returns the ``membership_*`` result keys plus ``details`` for the provenance.

    ``reference``: a model trained without the forget images *and* without the held-out images (e.g.
    one trained on the retain data only). With it, each image's score is calibrated by how hard the
    image is for a model that never saw it (offline reference attack, Watson et al. 2022; Carlini et
    al. 2022): ``score = −log(L(x) / L_ref(x))`` with the same shared noise for both models. Needed when
    the forget images have no same-distribution held-out images (an out-of-distribution canary is hard
    for every model that has not memorised it, which the raw loss mistakes for "non-member").
    """
    config = config or AuditConfig()
    members, nonmembers, source = audit_sets(forget_set, split)
    generator = torch.Generator().manual_seed(config.seed)
    cap = config.max_images or MAX_IMAGES
    members, nonmembers = _cap(members, cap, generator), _cap(nonmembers, cap, generator)
    from unlearnctl.sampling import auto_batch_size

    batch_size = config.batch_size or auto_batch_size(unet, checkpoint.unet_config["sample_size"])
    common = dict(timesteps=config.timesteps, repeats=config.repeats, seed=config.seed, batch_size=batch_size)
    schedule = NoiseSchedule(checkpoint.scheduler_config)
    was_training = unet.training
    unet.eval()
    try:
        loss_m = audit_losses(unet, checkpoint, members, _condition(members, checkpoint), schedule, **common)  # R×M
        loss_n = audit_losses(unet, checkpoint, nonmembers, _condition(nonmembers, checkpoint), schedule, progress=progress, **common)
    finally:
        unet.train(was_training)
    score_m, score_n = -loss_m, -loss_n  # R×M, R×N: higher = more member-like
    calibration = None
    if reference is not None:
        check_reference(checkpoint, reference)
        ref_unet = reference.build_unet(next(unet.parameters()).device).eval()
        cond_m, cond_n = _reference_conditions(members, nonmembers, checkpoint, reference)
        ref_m = audit_losses(ref_unet, reference, members, cond_m, schedule, **common)
        ref_n = audit_losses(ref_unet, reference, nonmembers, cond_n, schedule, **common)
        score_m, score_n = -(loss_m / ref_m).log(), -(loss_n / ref_n).log()
        calibration = {"reference": str(reference.path) if reference.path else None, "reference_sha256": reference.sha256,
                       "score": "-log(L / L_ref)", "reference_conditioning": None if cond_m is None else
                       ("null class" if reference.null_class is not None and bool((cond_m == reference.null_class).all()) else "class"),
                       "reference_member_loss_mean": float(ref_m.mean()),
                       "reference_nonmember_loss_mean": float(ref_n.mean())}
    # the attack score of an image: mean over repeats (for the ratio: of the per-repeat log ratios)
    final_m, final_n = score_m.mean(0).double().numpy(), score_n.mean(0).double().numpy()
    figures = attack_figures(final_m, final_n, TARGET_FPR)
    per_repeat = [attack_figures(score_m[r].double().numpy(), score_n[r].double().numpy())["auc"] for r in range(config.repeats)]
    bound = epsilon_lower_bound(final_m, final_n, config.confidence, config.seed)
    mean_m, mean_n = float(loss_m.mean()), float(loss_n.mean())
    # stratified bootstrap: members and non-members resampled separately (same draws for both statistics)
    rounds, seed = config.bootstrap_rounds, config.seed
    auc_lo, auc_hi = percentile_interval(bootstrap(rank_auc, (final_m, final_n), rounds, seed))
    balanced = bootstrap(balanced_accuracy, (final_m, final_n), rounds, seed)
    bal_lo, bal_hi = percentile_interval(balanced)
    epsilon, epsilon_reason = bound["epsilon"], None
    if bound["ceiling"] <= 0:
        epsilon = None
        epsilon_reason = (f"{bound['n_members']} + {bound['n_nonmembers']} test images cannot give a bound above 0 even "
                          "when perfectly separated (the audit needs more members and non-members)")
    timesteps = len(config.timesteps)
    size = {"members": len(members), "nonmembers": len(nonmembers), "max_images": cap,
            "repeats": config.repeats, "timesteps": timesteps,
            "unet_image_passes": (len(members) + len(nonmembers)) * config.repeats * timesteps * (2 if reference else 1),
            "batch_size": batch_size, "bootstrap_rounds": rounds}
    return {
        "membership_auc": figures["auc"],
        "membership_auc_ci95_low": auc_lo,
        "membership_auc_ci95_high": auc_hi,
        "membership_auc_std": float(np.std(per_repeat)),
        "membership_balanced_accuracy": figures["balanced_accuracy"],
        "membership_balanced_accuracy_ci95_low": bal_lo,
        "membership_balanced_accuracy_ci95_high": bal_hi,
        **tpr_at_fpr(final_m, final_n, TARGET_FPR),
        "membership_epsilon_lb": epsilon,
        "membership_epsilon_lb_unsupported_reason": epsilon_reason,
        "membership_epsilon_lb_max": bound["ceiling"],
        "membership_epsilon_lb_capped": bool(bound["capped"]) if epsilon is not None else None,
        "membership_epsilon_confidence": config.confidence,
        "membership_loss_ratio": mean_m / mean_n if mean_n > 0 else None,
        "membership_members": len(members),
        "membership_nonmembers": len(nonmembers),
        "details": {"nonmember_source": source, "member_loss_mean": mean_m, "nonmember_loss_mean": mean_n,
                    "calibration": calibration, "auc_per_repeat": per_repeat, "epsilon_test": bound,
                    "size": size, "config": config.to_dict()},
    }
