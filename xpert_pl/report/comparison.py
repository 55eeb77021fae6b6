"""The numbers of the report, computed once from a runs directory's usable cells (every comparison paired by seed).

Convergence is measured per seed: the step (linearly interpolated between validations) at which a method's run
first reaches the final validation loss of scratch's run with the same seed, as a fraction of that scratch run's
last validation step; the table averages the fractions of the seeds that reached it and counts those that did
not. Pairing by seed keeps scratch's own fraction at 1 (up to noise that dips earlier) and allows paired tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from xpert_pl.experiments.matrix import BASELINE
from xpert_pl.report.runs import XPERT, RunsDir
from xpert_pl.report.stats import (
    Paired,
    Spread,
    Worth,
    paired,
    scratch_tokens_worth,
    spread,
    steps_fraction,
)

VAL_LOSS = "val/loss"


@dataclass
class RunComparison:
    """The methods of a `RunsDir` compared with each other (paired by seed): lookups and statistics."""

    runs: RunsDir

    def headline_groups(self) -> list[tuple[str, str]]:
        """(scale, largest budget) for every scale with usable runs."""
        return [(s, b) for s in self.runs.scales() if (b := self.runs.largest_budget(s)) is not None]

    def groups(self) -> list[tuple[str, str]]:
        """Every (scale, budget) with usable runs, smallest budget first within a scale."""
        return [(s, b) for s in self.runs.scales() for b in self.runs.budgets(s)]

    def values(self, scale: str, budget: str, method: str, key: str = VAL_LOSS) -> dict[int, float]:
        """seed -> final value of `key`, over the usable runs that logged it."""
        return {c.seed: c.final[key] for c in self.runs.select(scale, budget, method) if key in c.final}

    def spread(self, scale: str, budget: str, method: str, key: str = VAL_LOSS) -> Spread:
        return spread(list(self.values(scale, budget, method, key).values()))

    def compare(self, scale: str, budget: str, a: str, b: str, key: str = VAL_LOSS) -> Paired:
        """Paired `a - b` of a final metric over the seeds both methods have."""
        return paired(self.values(scale, budget, a, key), self.values(scale, budget, b, key))

    def metric_keys(self, scale: str, budget: str, prefix: str) -> list[str]:
        """Final-metric names starting with `prefix` logged by any usable run of the group, sorted."""
        methods = self.runs.methods(scale, budget)
        keys = {k for m in methods for c in self.runs.select(scale, budget, m) for k in c.final if k.startswith(prefix)}
        return sorted(keys)

    def fractions(self, scale: str, budget: str, method: str) -> dict[int, float | None]:
        """seed -> fraction of scratch's steps needed to reach scratch's final loss (None: not reached)."""
        # A run whose early metrics are missing cannot say when it reached the target: left out, not "not reached".
        scratch = {c.seed: c.val_curve for c in self.runs.select(scale, budget, BASELINE) if c.history_from is None}
        runs = [c for c in self.runs.select(scale, budget, method) if c.history_from is None]
        return {c.seed: steps_fraction(c.val_curve, scratch[c.seed]) for c in runs if c.seed in scratch}

    def compare_fractions(self, scale: str, budget: str, a: str, b: str) -> Paired:
        """Paired `a - b` of the steps fraction, over the seeds where both reached scratch's final loss."""
        fa, fb = ({s: v for s, v in self.fractions(scale, budget, m).items() if v is not None} for m in (a, b))
        return paired(fa, fb)

    def budget_tokens(self, scale: str, budget: str, method: str) -> float | None:
        """Mean token budget of a method's usable runs (see `CellRun.budget_tokens`)."""
        known = [t for c in self.runs.select(scale, budget, method) if (t := c.budget_tokens) is not None]
        return sum(known) / len(known) if known else None

    def scratch_points(self, scale: str) -> list[tuple[float, float]]:
        """(tokens, mean final loss) of scratch at every budget of the scale."""
        points = []
        for budget in self.runs.budgets(scale):
            tokens, loss = self.budget_tokens(scale, budget, BASELINE), self.spread(scale, budget, BASELINE).mean
            if tokens is not None and math.isfinite(loss):
                points.append((tokens, loss))
        return points

    def worth(self, scale: str, budget: str, method: str) -> Worth | None:
        """The scratch tokens the method's mean final loss at this budget is worth."""
        return scratch_tokens_worth(self.scratch_points(scale), self.spread(scale, budget, method).mean)

    def summary(self) -> dict[str, Any]:
        """The report's numbers as JSON-able data (what `report.json` holds)."""
        return {"groups": [self._group_summary(s, b) for s, b in self.groups()]}

    def _group_summary(self, scale: str, budget: str) -> dict[str, Any]:
        keys = self.metric_keys(scale, budget, "")
        methods = {}
        for method in self.runs.methods(scale, budget):
            finals = {k: _spread_dict(self.spread(scale, budget, method, k)) for k in keys}
            entry: dict[str, Any] = {"final": {k: v for k, v in finals.items() if v["n"]}}
            entry["seeds"] = [c.seed for c in self.runs.select(scale, budget, method)]
            if method != BASELINE:
                entry["vs_scratch"] = {k: paired_dict(self.compare(scale, budget, method, BASELINE, k)) for k in keys}
            if method != XPERT and XPERT in self.runs.methods(scale, budget):
                entry["xpert_vs"] = self._xpert_vs(scale, budget, method, keys)
            entry["steps_fraction"] = {str(s): v for s, v in self.fractions(scale, budget, method).items()}
            worth, tokens = self.worth(scale, budget, method), self.budget_tokens(scale, budget, method)
            if worth is not None and tokens:
                entry["scratch_tokens_worth"] = {"tokens": worth.tokens, "relation": worth.relation}
                entry["token_multiplier"] = worth.tokens / tokens
            methods[method] = entry
        headline = (scale, budget) in self.headline_groups()
        return {"scale": scale, "budget": budget, "headline": headline, "methods": methods}

    def _xpert_vs(self, scale: str, budget: str, method: str, keys: list[str]) -> dict[str, Any]:
        """XPERT minus `method`: the final loss (the verdict; per domain too, e.g. a single domain's experts on that
        domain) and the steps fraction (knowledge or statistics)."""
        losses = [VAL_LOSS, *(k for k in keys if k.startswith(f"{VAL_LOSS}/"))]
        result = {k: paired_dict(self.compare(scale, budget, XPERT, method, k)) for k in losses}
        return {**result, "steps_fraction": paired_dict(self.compare_fractions(scale, budget, XPERT, method))}


def paired_dict(result: Paired) -> dict[str, Any]:
    """A comparison as JSON, with its per-seed values (`a`, `b` in `seeds` order) so it can be re-derived."""
    return {
        "seeds": list(result.seeds),
        "a": None if result.a is None else list(result.a),
        "b": None if result.b is None else list(result.b),
        "mean_diff": result.mean_diff,
        "ci": [result.ci_low, result.ci_high],
        "interval": "paired t, 95%",
        "p_value": result.p_value,
        "direction": result.direction,
    }


def _spread_dict(result: Spread) -> dict[str, Any]:
    return {"n": result.n, "mean": result.mean, "std": result.std}
