"""Interval formulas against independent computations: scipy's Wilson, hand-written bootstrap loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unlearnctl.errors import BadInputError
from unlearnctl.metrics.intervals import (
    median_interval,
    bootstrap, bootstrap_indices, centred_interval, percentile_interval, rate_fields, t_interval, wilson,
)


@pytest.mark.parametrize("k,n", [(0, 20), (20, 20), (3, 20), (1, 1), (9, 200), (500, 1000), (0, 1)])
def test_wilson_matches_scipy(k, n):
    from scipy.stats import binomtest

    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson(k, n)
    assert low == pytest.approx(expected.low, abs=1e-12) and high == pytest.approx(expected.high, abs=1e-12)


def test_wilson_closed_form_at_the_edges():
    z = 1.959963984540054
    for n in (10, 100):
        # 0/n: [0, z²/(n + z²)]; n/n: [n/(n + z²), 1]
        assert wilson(0, n) == pytest.approx((0.0, z * z / (n + z * z)), abs=1e-12)
        assert wilson(n, n) == pytest.approx((n / (n + z * z), 1.0), abs=1e-12)
    # 2/10 by hand: centre (0.2 + z²/20)/(1 + z²/10), half z/(1 + z²/10)·sqrt(0.016 + z²/400)
    centre = (0.2 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.2 * 0.8 / 10 + z * z / 400)
    assert wilson(2, 10) == pytest.approx((centre - half, centre + half), abs=1e-12)


def test_rate_fields_and_bad_counts():
    fields = rate_fields("forget_rate", 4, 200)
    assert fields["forget_rate"] == 0.02 and fields["forget_rate_count"] == 4 and fields["forget_rate_n"] == 200
    assert fields["forget_rate_ci95_low"] < 0.02 < fields["forget_rate_ci95_high"]
    with pytest.raises(BadInputError):
        wilson(3, 0)
    with pytest.raises(BadInputError):
        wilson(5, 4)


def test_bootstrap_equals_a_direct_loop():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=37), rng.normal(1, 2, size=53)

    def statistic(x, y):
        return float(np.median(y) - x.mean())

    values = bootstrap(statistic, (a, b), rounds=50, seed=11)
    # the documented draws, written out: one generator, per round each sample in order
    draw = np.random.default_rng(11)
    expected = []
    for _ in range(50):
        ia = draw.integers(0, len(a), size=len(a))
        ib = draw.integers(0, len(b), size=len(b))
        expected.append(np.median(b[ib]) - a[ia].mean())
    np.testing.assert_array_equal(values, np.array(expected))
    # the index generator used for weighted statistics draws the same indices
    first = next(bootstrap_indices([len(a), len(b)], 1, seed=11))
    draw = np.random.default_rng(11)
    np.testing.assert_array_equal(first[0], draw.integers(0, len(a), size=len(a)))


def test_percentile_interval_of_a_mean_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, size=400)
    low, high = percentile_interval(bootstrap(np.mean, (x,), rounds=2000, seed=1))
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert low == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)


def test_centred_interval_contains_the_estimate_and_keeps_the_spread():
    values = np.linspace(10, 20, 101)  # median 15, 2.5% 10.25, 97.5% 19.75
    low, high = centred_interval(3.0, values)
    assert low == pytest.approx(3.0 - 4.75) and high == pytest.approx(3.0 + 4.75)


def test_t_interval_against_scipy():
    from scipy import stats

    values = [0.04, 0.06, 0.035]
    mean, low, high = t_interval(values)
    expected = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values)) and (low, high) == pytest.approx(expected)
    with pytest.raises(BadInputError):
        t_interval([0.1])


@pytest.mark.parametrize("n", [6, 7, 12, 20, 51])
def test_median_interval_takes_the_order_statistics_scipys_binomial_gives(n):
    from scipy.stats import binom

    values = np.random.default_rng(n).lognormal(size=n)
    expected_k = max(k for k in range(1, n // 2 + 1) if 1 - 2 * binom.cdf(k - 1, n, 0.5) >= 0.95)
    x = np.sort(values)
    median, low, high = median_interval(values)
    assert median == pytest.approx(float(np.median(values)))
    assert (low, high) == (x[expected_k - 1], x[n - expected_k])
    assert low <= median <= high


def test_median_interval_of_twelve_is_the_third_and_tenth_value():
    assert median_interval(list(range(12, 0, -1))) == (6.5, 3.0, 10.0)


def test_median_interval_has_no_bounds_when_five_values_cannot_cover_95_percent():
    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (3.0, None, None)
    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0], level=0.9)[1:] == (1.0, 5.0)  # 1 − 2/32 = 0.9375


def test_median_interval_covers_the_true_median_at_least_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    draws = rng.exponential(size=(4000, 12))  # true median ln 2
    hits = sum(low <= math.log(2) <= high for _, low, high in map(median_interval, draws))
    assert hits / len(draws) >= 0.95  # exact coverage 0.961 for n = 12
