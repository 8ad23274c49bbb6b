"""Confidence intervals of evaluation figures: Wilson for rates, a stratified bootstrap for the rest.

Every rate ``X`` in ``evaluate``'s JSON carries ``X_count`` (successes), ``X_n`` (trials) and a 95% Wilson
interval ``X_ci95_low``/``X_ci95_high`` (:func:`rate_fields`); AUC, FID and KID carry bootstrap intervals
(:func:`bootstrap`). docs/metrics.md lists every key.

* **Wilson score interval** (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the normal
  "Wald" interval, which collapses to a point at 0/n and n/n). For ``k`` successes in ``n`` trials,
  ``p̂ = k/n`` and ``z`` the standard-normal quantile of ``1 − α/2`` (1.959964 at 95%)::

      centre    = (p̂ + z²/(2n)) / (1 + z²/n)
      halfwidth = z / (1 + z²/n) · sqrt(p̂(1 − p̂)/n + z²/(4n²))
      interval  = [centre − halfwidth, centre + halfwidth]

  It stays inside [0, 1] and is not empty at ``k = 0`` (upper bound ``z²/(n + z²)``).
* **Bootstrap** (Efron & Tibshirani 1993, ch. 13): resample each sample *separately* with replacement
  (stratified: members and non-members keep their sizes), recompute the statistic, ``B`` rounds. Draws:
  ``rng = numpy.random.default_rng(seed)``; in round ``b``, for each sample in order,
  ``rng.integers(0, n_i, size=n_i)`` — so a fixed seed gives the same interval everywhere.
  :func:`percentile_interval` takes the ``α/2`` and ``1 − α/2`` quantiles of the ``B`` values;
  :func:`centred_interval` shifts that interval by the bootstrap's median bias (for FID/KID, see there).
* **Median of a few repeats** (:func:`median_interval`; the benchmarks' per-round timing ratios): the
  distribution-free order-statistic interval ``[x_(k), x_(n+1−k)]`` (Conover 1999, §3.2), ``k`` the largest
  with ``1 − 2·P(Binomial(n, ½) ≤ k − 1) ≥ level``; it needs no assumption about the spread of the repeats.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from unlearnctl.errors import require

Z95 = 1.959963984540054  # standard-normal quantile at 0.975
BOOTSTRAP_ROUNDS = 200  # default rounds: the 2.5% quantile rests on the 5th value; ~0.1 s for an AUC of 2,000 scores


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of ``successes`` out of ``trials`` (module docstring formula)."""
    require(trials >= 1 and 0 <= successes <= trials, f"a rate needs 0 ≤ successes ≤ trials and trials ≥ 1, got {successes}/{trials}")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    halfwidth = z / denominator * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - halfwidth), min(1.0, centre + halfwidth)


def rate_fields(key: str, successes: int, trials: int) -> dict[str, Any]:
    """``{key: k/n, key_count: k, key_n: n, key_ci95_low, key_ci95_high}`` (Wilson 95%)."""
    successes, trials = int(successes), int(trials)
    low, high = wilson(successes, trials)
    return {key: successes / trials, f"{key}_count": successes, f"{key}_n": trials,
            f"{key}_ci95_low": low, f"{key}_ci95_high": high}


def rate_keys(key: str, what: str) -> dict[str, str]:
    """Registry descriptions of the interval keys of rate ``key`` (``what`` names its trials)."""
    return {f"{key}_count": f"{key}: successes (of {key}_n)",
            f"{key}_n": f"{key}: trials — {what}",
            f"{key}_ci95_low": f"{key}: lower end of the 95% Wilson interval",
            f"{key}_ci95_high": f"{key}: upper end of the 95% Wilson interval"}


def interval_keys(key: str, how: str) -> dict[str, str]:
    """Registry descriptions of ``key_ci95_low``/``key_ci95_high`` (``how``: the interval's method)."""
    return {f"{key}_ci95_low": f"{key}: lower end of the 95% {how} interval",
            f"{key}_ci95_high": f"{key}: upper end of the 95% {how} interval"}


def bootstrap(statistic: Callable[..., float], samples: Sequence[np.ndarray], rounds: int = BOOTSTRAP_ROUNDS,
              seed: int = 0) -> np.ndarray:
    """The statistic on ``rounds`` stratified resamples of ``samples``, shape ``[rounds]``.

    ``statistic(*resampled)`` is called with one array per sample, each resampled with replacement to its own
    size (draw order in the module docstring). Samples of size 0 are passed through unchanged.
    """
    require(rounds >= 1, f"bootstrap rounds must be at least 1, got {rounds}")
    rng = np.random.default_rng(seed)
    values = np.empty(rounds)
    for b in range(rounds):
        resampled = [s[rng.integers(0, len(s), size=len(s))] if len(s) else s for s in samples]
        values[b] = statistic(*resampled)
    return values


def bootstrap_indices(sizes: Sequence[int], rounds: int, seed: int = 0):
    """The index arrays :func:`bootstrap` draws, round by round (for statistics computed from weights)."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        yield [rng.integers(0, n, size=n) if n else np.zeros(0, dtype=np.int64) for n in sizes]


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval: the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of ``values``."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    require(len(values) > 0, "no finite bootstrap value")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def centred_interval(estimate: float, values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval moved so its bootstrap median sits on ``estimate``.

    ``[θ̂ − (m* − q*_lo), θ̂ + (q*_hi − m*)]`` with ``m*`` the median of the bootstrap values. For FID and
    KID resampling with replacement repeats rows, which itself raises the statistic (FID is biased
    upward at finite n, Chong & Forsyth 2020), so the raw quantiles sit above the estimate; the shift
    removes that bias and keeps the spread. The interval says how far the figure moves with the draw of
    samples; it is not an interval for the infinite-sample value.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    low, high = percentile_interval(values, level)
    median = float(np.median(values))
    return estimate - (median - low), estimate + (high - median)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval of the mean of ``values`` (e.g. one figure over seeds).

    ``mean ± t_{n−1, (1+level)/2} · s / sqrt(n)`` with ``s`` the sample standard deviation; needs n ≥ 2.
    """
    from scipy.stats import t

    values = np.asarray(values, dtype=float)
    require(len(values) >= 2, "a t-interval needs at least 2 values")
    mean = float(values.mean())
    half = float(t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """``(median, low, high)``: the median of ``values`` and its distribution-free order-statistic interval.

    Sorted ``x_(1) ≤ … ≤ x_(n)``: ``[x_(k), x_(n+1−k)]`` for the largest ``k`` whose coverage
    ``1 − 2·P(Binomial(n, ½) ≤ k − 1)`` is at least ``level`` (12 values at 95%: ``k = 3``, coverage 96.1%) —
    scipy's ``quantile_test(...).confidence_interval`` for p = ½. The bounds are ``None`` when even
    ``[min, max]`` covers less than ``level`` (fewer than 6 values at 95%).
    """
    from scipy.stats import quantile_test

    x = np.asarray(values, dtype=float)
    require(len(x) >= 1, "a median needs at least 1 value")
    median = float(np.median(x))
    interval = quantile_test(x, q=median, p=0.5).confidence_interval(level)
    if not (np.isfinite(interval.low) and np.isfinite(interval.high)):
        return median, None, None
    return median, float(interval.low), float(interval.high)
