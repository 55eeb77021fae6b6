"""FFNTransfer: the adaptation rules every expert-based initializer shares (neurons, hidden size, depth)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xpert_pl.adaptation import split_neurons, uniform_indices
from xpert_pl.initializers import FFNTransfer, SourceFFN

HIDDEN, INTER = 32, 64


def random_source(layers: int = 2, seed: int = 0) -> SourceFFN:
    g = torch.Generator().manual_seed(seed)
    mats = {
        layer: {
            "gate": torch.randn(INTER, HIDDEN, generator=g),
            "up": torch.randn(INTER, HIDDEN, generator=g),
            "down": torch.randn(HIDDEN, INTER, generator=g),
        }
        for layer in range(layers)
    }
    return SourceFFN(layers=mats, expert_norms=None)


def swiglu(mats: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ mats["gate"].T) * (x @ mats["up"].T)) @ mats["down"].T


def test_split_widening_keeps_the_ffn_function(make_student):
    source = random_source()
    student = make_student(intermediate=160)
    _, details = FFNTransfer(rescale="none", wider_ffn="split").apply(student, source)
    x = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(3))
    for j, layer in enumerate(details["depth_map"]):
        with torch.no_grad():
            out = student.model.layers[j].mlp(x)
        assert torch.allclose(out, swiglu(source.layers[layer], x), atol=1e-4)
    assert details["layers"][0]["neurons_set"] == 160
    assert "function-preserving" in details["layers"][0]["neuron_selection"]


def test_split_shares_are_positive_and_sum_to_one_per_source_neuron():
    rows, shares = split_neurons(4, 10, torch.Generator().manual_seed(0))
    assert rows.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    totals = torch.zeros(4).index_add_(0, rows, shares)
    assert torch.allclose(totals, torch.ones(4), atol=1e-6)
    assert bool((shares > 0).all()) and len(set(shares.tolist())) > 4  # unequal shares break the symmetry


def test_uniform_neuron_selection_takes_evenly_spaced_neurons(make_student):
    source = random_source()
    student = make_student(intermediate=16)
    FFNTransfer(rescale="none", neuron_selection="uniform").apply(student, source)
    keep = uniform_indices(INTER, 16)
    assert keep.tolist() == [0, 4, 8, 13, 17, 21, 25, 29, 34, 38, 42, 46, 50, 55, 59, 63]
    mlp = student.model.layers[1].mlp
    assert torch.equal(mlp.gate_proj.weight, source.layers[1]["gate"][keep])
    assert torch.equal(mlp.down_proj.weight, source.layers[1]["down"][:, keep])


def test_grouped_depth_needs_one_group_per_layer(make_student):
    source = random_source(layers=3)
    _, details = FFNTransfer(rescale="none", depth_strategy="grouped").apply(make_student(layers=3), source)
    assert details["depth_map"] == [0, 1, 2]
    with pytest.raises(ValueError, match="group_layers 2"):
        FFNTransfer(rescale="none", depth_strategy="grouped").apply(make_student(layers=2), source)


def test_bad_requests_are_refused_with_the_choices(make_student):
    with pytest.raises(ValueError, match="neuron_selection must be one of energy, uniform"):
        FFNTransfer(neuron_selection="random")
    with pytest.raises(ValueError, match="first"):
        FFNTransfer(rescale="none", depth_strategy="first").apply(make_student(layers=3), random_source(layers=2))
    with pytest.raises(ValueError, match="expert norms"):
        FFNTransfer(rescale="expert_norm").apply(make_student(), random_source())
    bad = random_source().layers
    bad[1]["down"] = bad[1]["down"][:, :10]
    with pytest.raises(ValueError, match="inconsistent FFN shapes"):
        SourceFFN(layers=bad)
