"""Collapse, rescaling, depth mapping, neuron and hidden selection rules (DESIGN.md sections 4-5)."""

from __future__ import annotations

import pytest
import torch

from xpert_pl.adaptation import depth_map, rescale, select_hidden, select_neurons
from xpert_pl.bank import TuckerConsolidator, collapse


def test_full_rank_collapse_is_the_weighted_average():
    experts = torch.randn(12, 10, 3, generator=torch.Generator().manual_seed(1))
    weights = torch.tensor([0.5, 0.3, 0.2])
    result = TuckerConsolidator(ranks=[1.0, 1.0, 1.0]).decompose(experts)
    average = (experts * weights).sum(-1)
    assert torch.allclose(collapse(result.core, result.factors, weights), average, atol=1e-4)


def test_truncated_collapse_averages_the_denoised_experts(low_rank_tensor):
    result = TuckerConsolidator(ranks=[3, 3, 2]).decompose(low_rank_tensor)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    expected = (result.reconstruct() * weights).sum(-1)
    assert torch.allclose(collapse(result.core, result.factors, weights), expected, atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        collapse(result.core, result.factors, torch.ones(3) / 3)


def test_rescale_sets_the_frobenius_norm():
    matrix = torch.randn(6, 4)
    scaled = rescale(matrix, 3.0)
    assert torch.linalg.matrix_norm(scaled).item() == pytest.approx(3.0, rel=1e-6)
    assert torch.allclose(scaled / scaled.norm(), matrix / matrix.norm(), atol=1e-6)
    assert torch.equal(rescale(torch.zeros(2, 2), 1.0), torch.zeros(2, 2))


@pytest.mark.parametrize(
    ("num_source", "num_target", "expected"),
    [
        (4, 2, [0, 3]),
        (16, 8, [0, 2, 4, 6, 9, 11, 13, 15]),
        (16, 12, [0, 1, 3, 4, 5, 7, 8, 10, 11, 12, 14, 15]),
        (16, 16, list(range(16))),
        (6, 3, [0, 3, 5]),  # 2.5 rounds half up
        (4, 1, [0]),  # a single target layer takes source layer 0
        (2, 4, [0, 0, 1, 1]),  # a deeper student repeats source layers
    ],
)
def test_uniform_depth_map(num_source, num_target, expected):
    assert depth_map(num_source, num_target, "uniform") == expected


def test_first_depth_map():
    assert depth_map(16, 8, "first") == list(range(8))
    with pytest.raises(ValueError, match="num_target <= num_source"):
        depth_map(2, 4, "first")
    with pytest.raises(ValueError, match="unknown depth strategy"):
        depth_map(4, 2, "last")


def test_width_halving_keeps_the_highest_energy_neurons():
    # Neuron i gets energy from rows/columns scaled by known factors; gate, up and down all contribute.
    scale = torch.tensor([1.0, 5.0, 2.0, 7.0, 3.0, 0.5])
    gate = torch.ones(6, 4) * scale[:, None]
    up = torch.zeros(6, 4)
    down = torch.zeros(4, 6)
    up[0] = 10.0  # neuron 0: energy 4 + 400 from `up` alone
    down[:, 5] = 9.0  # neuron 5: energy 1 + 324 from `down` alone
    # energies: [404, 100, 16, 196, 36, 325] -> top three are 0, 5, 3, returned ascending
    assert select_neurons(gate, up, down, 3).tolist() == [0, 3, 5]
    assert select_neurons(gate, up, down, 1).tolist() == [0]
    assert select_neurons(gate, up, down, 6).tolist() == list(range(6))
    assert select_neurons(gate, up, down, 9).tolist() == list(range(6))  # wider target: all, caller fills first 6


def test_neuron_selection_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="I x H"):
        select_neurons(torch.ones(6, 4), torch.ones(6, 4), torch.ones(6, 4), 3)


def test_hidden_selection():
    assert select_hidden(10, 4).tolist() == [0, 3, 6, 9]
    assert select_hidden(10, 3).tolist() == [0, 5, 9]  # 4.5 rounds half up
    assert select_hidden(7, 7).tolist() == list(range(7))
    assert select_hidden(5, 1).tolist() == [0]
    wide = select_hidden(2048, 1536)
    assert len(wide) == 1536 and wide[0] == 0 and wide[-1] == 2047
    assert bool((wide[1:] > wide[:-1]).all())
    halved = select_hidden(128, 64)
    assert len(set(halved.tolist())) == 64 and bool((halved.diff() > 0).all())
    with pytest.raises(ValueError, match="only shrink"):
        select_hidden(128, 256)
