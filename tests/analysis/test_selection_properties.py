"""Property-based tests (hypothesis): every selector returns a valid selection for any routing counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpert_pl.analysis import ActivationCounts
from xpert_pl.analysis.selection import ConsistentExpertSelector
from xpert_pl.analysis.strategies import (
    DomainSpecialistSelector,
    LeastFrequentSelector,
    RandomExpertSelector,
    TopFrequencySelector,
)


@st.composite
def routing_counts(draw) -> ActivationCounts:
    layers, domains = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    experts = draw(st.integers(2, 12))
    top_k = draw(st.integers(1, experts))
    tokens = draw(st.lists(st.integers(0, 50), min_size=domains, max_size=domains))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(layers, domains, experts, dtype=torch.int64)
    for d, n in enumerate(tokens):
        for _ in range(n):  # each token picks top_k distinct experts in every layer
            picks = torch.stack([torch.randperm(experts, generator=gen)[:top_k] for _ in range(layers)])
            counts[torch.arange(layers).unsqueeze(1), d, picks] += 1
    prob = counts.double() / max(top_k, 1)
    return ActivationCounts(
        domains=[f"d{i}" for i in range(domains)],
        counts=counts,
        prob_sum=prob,
        tokens=torch.tensor(tokens, dtype=torch.int64),
        top_k=top_k,
        num_experts=experts,
    )


SELECTORS = st.sampled_from(["consistent", "top", "least", "random", "specialist"])


def _selector(name: str, n: int, weighting: str):
    return {
        "consistent": lambda: ConsistentExpertSelector(n, weighting),
        "top": lambda: TopFrequencySelector(n, weighting),
        "least": lambda: LeastFrequentSelector(n, weighting),
        "random": lambda: RandomExpertSelector(n, seed=3, weighting=weighting),
        "specialist": lambda: DomainSpecialistSelector("d0", n, weighting),
    }[name]()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=routing_counts(), name=SELECTORS, data=st.data())
def test_any_counts_give_a_valid_selection(counts, name, data):
    n = data.draw(st.integers(1, counts.num_experts))
    weighting = data.draw(st.sampled_from(["frequency", "uniform"]))
    needs_counts = not (name == "random" and weighting == "uniform")  # a uniform random pick reads no counts
    if needs_counts and not bool((counts.tokens > 0).all()):
        with pytest.raises(ValueError, match="no tokens"):
            _selector(name, n, weighting).select(counts)
        return
    selection = _selector(name, n, weighting).select(counts)
    assert [layer.layer for layer in selection.layers] == list(counts.layer_indices)
    for layer in selection.layers:
        assert len(layer.experts) == n == len(set(layer.experts)) == len(layer.weights)
        assert all(0 <= e < counts.num_experts for e in layer.experts)
        assert all(w >= 0 for w in layer.weights) and abs(sum(layer.weights) - 1.0) < 1e-9
        assert len(layer.scores) == counts.num_experts
    again = _selector(name, n, weighting).select(counts)
    assert [x.experts for x in again.layers] == [x.experts for x in selection.layers]  # deterministic
