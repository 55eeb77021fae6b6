"""Property-based tests (hypothesis): the adaptation maps give valid indices and shapes for any sizes, and refuse
impossible requests with ValueError."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xpert_pl.adaptation import depth_map, select_hidden, split_neurons, spread_hidden, uniform_indices
from xpert_pl.bank import collapse

SIZES = st.integers(1, 300)


@given(size=SIZES, count=SIZES)
def test_uniform_indices(size, count):
    if count > size:
        with pytest.raises(ValueError):
            uniform_indices(size, count)
        return
    idx = uniform_indices(size, count).tolist()
    assert len(idx) == count and idx == sorted(set(idx)) and idx[0] == 0
    assert idx[-1] == (size - 1 if count > 1 else 0)


@given(source=st.integers(1, 40), target=st.integers(1, 40), strategy=st.sampled_from(["uniform", "first", "grouped"]))
def test_depth_map(source, target, strategy):
    impossible = (strategy == "first" and target > source) or (strategy == "grouped" and target != source)
    if impossible:
        with pytest.raises(ValueError):
            depth_map(source, target, strategy)
        return
    layers = depth_map(source, target, strategy)
    assert len(layers) == target and all(0 <= s < source for s in layers) and layers == sorted(layers)
    if strategy == "uniform" and target > 1:
        assert layers[0] == 0 and layers[-1] == source - 1


@given(source=SIZES, target=SIZES)
def test_hidden_maps(source, target):
    if target <= source:
        assert select_hidden(source, target).shape == (target,)
    else:
        with pytest.raises(ValueError):
            select_hidden(source, target)
        positions = spread_hidden(source, target)
        assert positions.shape == (source,) and int(positions.max()) < target


@settings(deadline=None)
@given(source=st.integers(1, 64), extra=st.integers(0, 64), seed=st.integers(0, 1000))
def test_split_neurons_keeps_each_neurons_total_share(source, extra, seed):
    copies, shares = split_neurons(source, source + extra, torch.Generator().manual_seed(seed))
    assert copies.shape == shares.shape == (source + extra,)
    totals = torch.zeros(source, dtype=shares.dtype).index_add_(0, copies, shares)
    assert torch.allclose(totals, torch.ones(source, dtype=shares.dtype), atol=1e-6) and bool((shares > 0).all())


@settings(deadline=None)
@given(d1=st.integers(1, 6), d2=st.integers(1, 6), n=st.integers(1, 5), seed=st.integers(0, 1000))
def test_collapse_shape_and_weighted_sum(d1, d2, n, seed):
    gen = torch.Generator().manual_seed(seed)
    core = torch.randn(d1, d2, n, generator=gen, dtype=torch.float64)
    eye = [torch.eye(d1, dtype=torch.float64), torch.eye(d2, dtype=torch.float64), torch.eye(n, dtype=torch.float64)]
    weights = torch.rand(n, generator=gen, dtype=torch.float64) + 0.01
    weights = weights / weights.sum()
    out = collapse(core, eye, weights)
    assert out.shape == (d1, d2)
    assert torch.allclose(out.double(), (core * weights).sum(-1), atol=1e-5)
