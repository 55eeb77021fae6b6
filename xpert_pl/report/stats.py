"""Statistics of the report: spread over seeds, paired comparisons, convergence and effective tokens.

Every comparison is paired by seed (the matrix gives every method of a seed the same weights seed and data
order). Conventions: standard deviations are sample ones (ddof=1); differences are `a - b`; the p-value is the
two-sided paired t-test `scipy.stats.ttest_rel(a, b)` and the 95% interval is that test's own t interval
(`.confidence_interval(0.95)`), so the interval excludes 0 exactly when p < 0.05. (A percentile bootstrap over
3-5 pairs, used before, is far too narrow: with no true difference it excluded 0 in about 24% of draws at 3
seeds and 17% at 5.)
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
MIN_SEEDS = 2


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (NaN for one value) of `n` values."""

    n: int
    mean: float
    std: float


@dataclass(frozen=True)
class Paired:
    """A paired comparison `a - b` over the seeds both sides have.

    Attributes:
        ci_low, ci_high: the 95% paired t interval of the mean difference; None with fewer than `MIN_SEEDS`
            pairs, with constant differences, or when it could not be recovered from a recorded summary.
        p_value: two-sided paired t-test; None with fewer than `MIN_SEEDS` pairs, NaN when every difference is
            the same (the t statistic is undefined).
        a, b: the per-seed values (in `seeds` order); None when only a summary was recorded.
    """

    seeds: tuple[int, ...]
    mean_diff: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    a: tuple[float, ...] | None = None
    b: tuple[float, ...] | None = None

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def tested(self) -> bool:
        """Whether a t-test was made (enough seeds, differences that vary): what a multiple-test adjustment counts."""
        return self.direction not in ("too few seeds", "constant")

    @property
    def direction(self) -> str:
        """The verdict: 'lower'/'higher' when the t interval excludes 0 (p < 0.05), else 'unclear'.

        'constant' for constant differences (no spread, no test), 'too few seeds' below `MIN_SEEDS` pairs.
        """
        if self.n < MIN_SEEDS or self.p_value is None:
            return "too few seeds"
        if math.isnan(self.p_value):
            return "constant"
        if self.ci_low is not None and self.ci_high is not None and self.ci_high < 0:
            return "lower"
        return "higher" if self.ci_low is not None and self.ci_low > 0 else "unclear"


def spread(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation over seeds."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return Spread(0, math.nan, math.nan)
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return Spread(int(array.size), float(array.mean()), std)


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired:
    """Compare `a - b` over the seeds both have (seed -> value): mean difference, paired t-test and its interval."""
    seeds = tuple(sorted(set(a) & set(b)))
    x, y = np.array([a[s] for s in seeds], dtype=float), np.array([b[s] for s in seeds], dtype=float)
    mean_diff = float((x - y).mean()) if seeds else math.nan
    values = {"a": tuple(map(float, x)), "b": tuple(map(float, y))}
    if len(seeds) < MIN_SEEDS:
        return Paired(seeds, mean_diff, None, None, None, **values)
    p_value, low, high = (float(v) for v in paired_t_tests(x, y))
    if math.isnan(p_value):
        return Paired(seeds, mean_diff, None, None, math.nan, **values)
    return Paired(seeds, mean_diff, low, high, p_value, **values)


def paired_t_tests(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired t-tests of `x - y` along the last axis (`paired`'s statistics, vectorised for many comparisons).

    Returns:
        (two-sided p-value, low, high) of the 95% t interval, each NaN where the differences are constant.
    """
    from scipy import stats

    diffs = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    # Constant differences (up to float rounding): the t statistic divides by a zero standard error and scipy
    # would return NaN, or a meaningless tiny p-value and zero-width interval from rounding noise.
    constant = np.ptp(diffs, axis=-1) <= 1e-12 * np.maximum(1.0, np.abs(diffs).max(axis=-1))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision-loss warning: those rows are masked
        result = stats.ttest_rel(x, y, axis=-1)
        interval = result.confidence_interval(LEVEL)
    p_value, low, high = (np.where(constant, np.nan, v) for v in (result.pvalue, interval.low, interval.high))
    return p_value, low, high


def bh_adjusted(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (`scipy.stats.false_discovery_control`): rejecting where the adjusted
    p < 0.05 keeps the expected share of false verdicts among the verdicts at most 5%, however many tests."""
    from scipy import stats

    return [float(p) for p in stats.false_discovery_control(np.asarray(p_values, dtype=float), method="bh")]


def t_interval_from_p(n: int, mean_diff: float, p_value: float, level: float = LEVEL) -> tuple[float, float] | None:
    """The paired t interval recovered from a recorded mean difference and two-sided p-value over `n` pairs.

    |t| = t.isf(p / 2, n - 1) and se = |mean_diff| / |t|, so the interval is mean_diff ± t.isf((1 - level) / 2,
    n - 1) * se. None when it cannot be recovered: t = 0 (p = 1 up to rounding) leaves the standard error unknown.
    """
    from scipy import stats

    t_abs = float(stats.t.isf(p_value / 2, n - 1))
    if not math.isfinite(t_abs) or t_abs < 1e-6 or mean_diff == 0:
        return None
    half = float(stats.t.isf((1 - level) / 2, n - 1)) * abs(mean_diff) / t_abs
    return mean_diff - half, mean_diff + half


def crossing_step(steps: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The first step at which a curve reaches `target` or below, linearly interpolated between points.

    None when it never does.
    """
    for i, (step, value) in enumerate(zip(steps, values, strict=True)):
        if value <= target:
            if i == 0:
                return float(step)
            prev_step, prev_value = steps[i - 1], values[i - 1]
            return float(prev_step + (prev_value - target) / (prev_value - value) * (step - prev_step))
    return None


def steps_fraction(
    method: tuple[Sequence[float], Sequence[float]], scratch: tuple[Sequence[float], Sequence[float]]
) -> float | None:
    """Fraction of scratch's steps (its last validation step) the method needs to reach scratch's final loss."""
    scratch_steps, scratch_values = scratch
    if not scratch_steps or scratch_steps[-1] <= 0:
        return None
    step = crossing_step(*method, target=scratch_values[-1])
    return None if step is None else step / scratch_steps[-1]


@dataclass(frozen=True)
class Worth:
    """The scratch tokens a loss is worth: `relation` is '=' inside scratch's range, '>' or '<' outside it."""

    tokens: float
    relation: str

    def multiplier(self, budget: float) -> str:
        """`tokens / budget` as text, e.g. '1.84x', '> 2.00x', '< 0.50x'."""
        value = self.tokens / budget
        return f"{value:.2f}x" if self.relation == "=" else f"{self.relation} {value:.2f}x"


def scratch_tokens_worth(scratch: Sequence[tuple[float, float]], loss: float) -> Worth | None:
    """Tokens scratch would need to reach `loss`: its final losses interpolated piecewise-linearly in log(tokens).

    Args:
        scratch: (tokens, final loss) of scratch at each budget.
        loss: the final loss to value.

    The first segment (from the smallest budget up) that brackets `loss` is used. Below scratch's lowest loss the
    answer is a lower bound ('>' the largest budget), above its highest an upper bound ('<' the smallest).
    """
    points = sorted((t, v) for t, v in scratch if t > 0 and math.isfinite(v))
    if not points or not math.isfinite(loss):
        return None
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if min(v0, v1) <= loss <= max(v0, v1):
            if v0 == v1:
                return Worth(t0, "=")
            log_t = math.log(t0) + (loss - v0) / (v1 - v0) * (math.log(t1) - math.log(t0))
            return Worth(math.exp(log_t), "=")
    if len(points) == 1 and loss == points[0][1]:
        return Worth(points[0][0], "=")
    best = min(points, key=lambda p: p[1])
    return Worth(max(t for t, _ in points), ">") if loss < best[1] else Worth(min(t for t, _ in points), "<")
