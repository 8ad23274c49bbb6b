"""Membership audit: does the model still treat the forget images as training data? (DESIGN §2)

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
   image's class for conditional models, the null class when unknown). The attack score is
   ``−L(x)`` with ``L = mean_r L_r``: lower loss → "member".
3. **Attack figures** on ``−L``: ROC AUC, balanced accuracy (best threshold: max over τ of
   ``(TPR + TNR)/2``), TPR at 1% FPR, and the AUC's standard deviation over the ``R`` repeats (each
   repeat scored alone) — VFLGAN's "spread over repeats".
4. **Empirical ε lower bound** (Jagielski et al. 2020, Nasr et al. 2021): ε-DP forces every test to
   satisfy ``TPR ≤ e^ε FPR`` and ``TNR ≤ e^ε FNR``. Members and non-members are split in half (seeded);
   the threshold and direction maximising the point estimate are chosen on the first half; on the
   second half one-sided Clopper–Pearson bounds at level ``α/2`` each (``α = 1 − confidence``) give
   ``ε ≥ max(0, log(TPR_lo / FPR_hi), log(TNR_lo / FNR_hi))`` — valid with probability ≥ ``confidence``.
   The bound is per forget *image*; a canary inserted ``K`` times is audited as one group.
5. **SISS membership loss ratio**: ``mean L(members) / mean L(non-members)``; ≈ 1 when the forget images
   look unseen, < 1 while they are still fitted better than unseen images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unlearnctl.data import ImageSet
from unlearnctl.diffusion import NoiseSchedule, per_sample_mse
from unlearnctl.errors import require
from unlearnctl.progress import ProgressFn, report

if TYPE_CHECKING:
    from unlearnctl.checkpoint import Checkpoint
    from unlearnctl.data import DataSplit, ForgetSet

AUDIT_TIMESTEPS = (25, 50, 100, 150, 200, 300, 400)  # of 1000: where train/unseen losses differ most
TARGET_FPR = 0.01  # the false-positive rate of membership_tpr_at_1pct_fpr


@dataclass
class AuditConfig:
    """Parameters of the membership audit (recorded in the evaluation's provenance)."""

    timesteps: tuple[int, ...] = AUDIT_TIMESTEPS  # fixed timesteps t_k of the loss
    repeats: int = 4  # shared-noise draws ε_rk; the AUC's spread is over these
    confidence: float = 0.95  # confidence level of the ε lower bound
    max_images: int = 1000  # cap on members and on non-members (seeded subset)
    batch_size: int = 1000  # images per UNet call
    seed: int = 0  # seeds the noise, subsets and the ε split

    def __post_init__(self):
        self.timesteps = tuple(int(t) for t in self.timesteps)
        require(len(self.timesteps) >= 1 and all(t >= 0 for t in self.timesteps), f"audit timesteps must be non-negative, got {self.timesteps}")
        require(self.repeats >= 1, f"audit repeats must be at least 1, got {self.repeats}")
        require(0.5 <= self.confidence < 1, f"audit confidence must be in [0.5, 1), got {self.confidence}")
        require(self.max_images >= 1, f"audit max images must be at least 1, got {self.max_images}")
        require(self.batch_size >= 1, f"audit batch size must be at least 1, got {self.batch_size}")

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
) -> torch.Tensor:
    """Per-image loss ``L_r(x)`` (mean over the timesteps), shape ``[repeats, N]``, with shared noise.

    The same seed gives the same noise for every call, so members and non-members (scored in separate
    calls) see identical ``ε_rk``.
    """
    require(all(t < schedule.num_train_timesteps for t in timesteps),
            f"audit timesteps must be below {schedule.num_train_timesteps}, got {max(timesteps)}")
    from unlearnctl.denoisers import PixelDenoiser

    model = PixelDenoiser(unet, schedule)  # the loss in the model's own parameterisation (ε, v or x₀)
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


def _condition(images: ImageSet, checkpoint: "Checkpoint") -> torch.Tensor | None:
    if not checkpoint.conditional:
        return None
    if images.labels is None:
        return torch.full((len(images),), checkpoint.null_class, dtype=torch.long)
    labels = images.labels.clone()
    labels[(labels < 0) | (labels >= checkpoint.null_class)] = checkpoint.null_class  # unknown class → null
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
                "n_nonmembers": len(nonmembers) - n_half}
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
    return {"epsilon": max(0.0, epsilon), "threshold": tau, "direction": direction,
            "n_members": len(test_m), "n_nonmembers": len(test_n)}


# --------------------------------------------------------------------------------------------- the audit


def check_reference(checkpoint: "Checkpoint", reference: "Checkpoint") -> None:
    """A calibration reference must see the same images and noise schedule as the audited model."""
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
            out.append(names.index(name) if name in names and names.index(name) < reference.null_class else None)
        return out

    ids_m, ids_n = mapped(members), mapped(nonmembers)
    use_class = audited.conditional and None not in ids_m + ids_n
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
    members, nonmembers = _cap(members, config.max_images, generator), _cap(nonmembers, config.max_images, generator)
    common = dict(timesteps=config.timesteps, repeats=config.repeats, seed=config.seed, batch_size=config.batch_size)
    schedule = NoiseSchedule(checkpoint.scheduler_config)
    was_training = unet.training
    unet.eval()
    try:
        loss_m = denoising_losses(unet, schedule, members.images, _condition(members, checkpoint), **common)  # R×M
        loss_n = denoising_losses(unet, schedule, nonmembers.images, _condition(nonmembers, checkpoint), progress=progress, **common)
    finally:
        unet.train(was_training)
    score_m, score_n = -loss_m, -loss_n  # R×M, R×N: higher = more member-like
    calibration = None
    if reference is not None:
        check_reference(checkpoint, reference)
        ref_unet = reference.build_unet(next(unet.parameters()).device).eval()
        cond_m, cond_n = _reference_conditions(members, nonmembers, checkpoint, reference)
        ref_m = denoising_losses(ref_unet, schedule, members.images, cond_m, **common)
        ref_n = denoising_losses(ref_unet, schedule, nonmembers.images, cond_n, **common)
        score_m, score_n = -(loss_m / ref_m).log(), -(loss_n / ref_n).log()
        calibration = {"reference": str(reference.path) if reference.path else None, "reference_sha256": reference.sha256,
                       "score": "-log(L / L_ref)", "reference_conditioning": None if cond_m is None else
                       ("class" if bool((cond_m != reference.null_class).any()) else "null class"),
                       "reference_member_loss_mean": float(ref_m.mean()),
                       "reference_nonmember_loss_mean": float(ref_n.mean())}
    # the attack score of an image: mean over repeats (for the ratio: of the per-repeat log ratios)
    final_m, final_n = score_m.mean(0).double().numpy(), score_n.mean(0).double().numpy()
    figures = attack_figures(final_m, final_n, TARGET_FPR)
    per_repeat = [attack_figures(score_m[r].double().numpy(), score_n[r].double().numpy())["auc"] for r in range(config.repeats)]
    bound = epsilon_lower_bound(final_m, final_n, config.confidence, config.seed)
    mean_m, mean_n = float(loss_m.mean()), float(loss_n.mean())
    return {
        "membership_auc": figures["auc"],
        "membership_auc_std": float(np.std(per_repeat)),
        "membership_balanced_accuracy": figures["balanced_accuracy"],
        "membership_tpr_at_1pct_fpr": figures["tpr_at_fpr"],
        "membership_epsilon_lb": bound["epsilon"],
        "membership_epsilon_confidence": config.confidence,
        "membership_loss_ratio": mean_m / mean_n if mean_n > 0 else None,
        "membership_members": len(members),
        "membership_nonmembers": len(nonmembers),
        "details": {"nonmember_source": source, "member_loss_mean": mean_m, "nonmember_loss_mean": mean_n,
                    "calibration": calibration, "auc_per_repeat": per_repeat, "epsilon_test": bound,
                    "config": config.to_dict()},
    }
