"""The verdict rule's false-positive rate with no true difference, and the t interval recovered from a summary."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from xpert_pl.report.stats import Paired, bh_adjusted, paired, paired_t_tests, t_interval_from_p

DRAWS = 4_000
CHECKED = 200  # draws also run one by one through `paired`, which must give the same verdicts


def null_pairs(n: int, seed: int) -> np.ndarray:
    """(DRAWS, n, 2) values of two methods per seed: correlated through the seed, no true difference."""
    rng = np.random.default_rng(seed)
    return rng.normal(3.0, 0.05, size=(DRAWS, n, 1)) + rng.normal(0.0, 0.02, size=(DRAWS, n, 2))


def verdicts(values: np.ndarray) -> list[Paired]:
    """Every draw as the report compares it: `paired`'s t-tests, vectorised, and `Paired.direction`."""
    n = values.shape[1]
    p_values, lows, highs = paired_t_tests(values[..., 0], values[..., 1])
    means = (values[..., 0] - values[..., 1]).mean(axis=1)
    rows = zip(means, lows, highs, p_values, strict=True)
    return [Paired(tuple(range(n)), float(m), float(lo), float(hi), float(p)) for m, lo, hi, p in rows]


@pytest.mark.parametrize("n", [3, 5])
def test_false_positive_rate_is_nominal_with_few_seeds(n):
    values = null_pairs(n, 20261201 + n)
    results = verdicts(values)
    for draw, result in zip(values[:CHECKED], results, strict=False):  # the vectorised path is paired()'s own
        one = paired(dict(enumerate(draw[:, 0])), dict(enumerate(draw[:, 1])))
        assert (one.direction, one.ci_low, one.p_value) == (result.direction, result.ci_low, result.p_value)
    fired = [r.direction in ("lower", "higher") for r in results]
    assert fired == [r.p_value < 0.05 for r in results]  # a verdict exactly when the t-test rejects
    rate = float(np.mean(fired))
    print(f"n = {n}: false-positive rate {rate:.4f} over {DRAWS} null draws")
    # Binomial standard error at 5% over 4,000 draws: 0.34 points, so 3-6% is about -6 to +3 standard errors. The
    # old percentile bootstrap fired in 15-25% of such draws; an interval too wide would fall under 3%.
    assert 0.03 < rate <= 0.06


@pytest.mark.parametrize(("n", "diffs"), [(3, [0.1, -0.02, 0.05]), (5, [-0.03, -0.01, -0.05, 0.002, -0.04])])
def test_t_interval_from_mean_and_p_matches_scipy(n, diffs):
    a = np.linspace(3.0, 3.2, n)
    test = stats.ttest_rel(a + np.array(diffs), a)
    expected = test.confidence_interval(0.95)
    low, high = t_interval_from_p(n, float(np.mean(diffs)), float(test.pvalue))
    assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-9, abs=1e-12)


def test_t_interval_from_p_for_tiny_p_and_the_unrecoverable_case():
    a, diffs = np.arange(5.0), np.array([-0.2294, -0.2301, -0.2288, -0.2290, -0.2297])
    test = stats.ttest_rel(a + diffs, a)  # p ~ 7e-12: isf keeps the tail precise where 1 - p/2 would round
    expected = test.confidence_interval(0.95)
    low, high = t_interval_from_p(5, float(diffs.mean()), float(test.pvalue))
    assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-7)
    assert t_interval_from_p(5, 0.0, 1.0) is None  # t = 0: the standard error is not recoverable
    assert t_interval_from_p(5, 1.1e-17, 0.9999999999999998) is None


def test_adjusting_for_seven_baselines_keeps_the_chance_of_any_false_verdict_near_5_percent():
    """Seven true-null comparisons of XPERT (sharing its values) at 5 seeds: without adjustment at least one fires in
    about a quarter to a third of runs; after Benjamini-Hochberg, in at most about 5%."""
    rng = np.random.default_rng(20261202)
    values = rng.normal(3.0, 0.05, size=(DRAWS, 5, 1)) + rng.normal(0.0, 0.02, size=(DRAWS, 5, 8))
    xpert = np.broadcast_to(values[..., :1], values[..., 1:].shape)
    p_values, _, _ = paired_t_tests(np.moveaxis(xpert, 1, -1), np.moveaxis(values[..., 1:], 1, -1))  # (draw, control)
    raw = float(np.mean((p_values < 0.05).any(axis=1)))
    adjusted = float(np.mean([min(bh_adjusted(row)) < 0.05 for row in p_values]))
    print(f"any of 7 null verdicts: {raw:.4f} unadjusted, {adjusted:.4f} after Benjamini-Hochberg")
    assert 0.2 < raw < 0.4
    assert adjusted <= 0.06


def test_bh_adjusted_matches_the_hand_computation():
    # Sorted 0.01, 0.03, 0.04, 0.5 over 4 tests: 0.04, 0.06, 0.0533, 0.5; then the running minimum from the top.
    assert bh_adjusted([0.03, 0.01, 0.5, 0.04]) == pytest.approx([0.16 / 3, 0.04, 0.5, 0.16 / 3])
