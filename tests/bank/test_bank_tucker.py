"""Tucker consolidation: exact recovery of low multilinear rank, rank resolution and validation."""

from __future__ import annotations

import pytest
import tensorly as tl
import torch

from xpert_pl.bank import TuckerConsolidator
from xpert_pl.bank.tucker import _processing_order


def test_exact_low_rank_is_recovered(low_rank_tensor):
    result = TuckerConsolidator(ranks=[5, 4, 3]).decompose(low_rank_tensor)
    assert result.relative_error < 1e-4
    assert result.ranks == (5, 4, 3)
    assert result.core.shape == (5, 4, 3) and result.core.dtype == torch.float32
    assert [tuple(f.shape) for f in result.factors] == [(20, 5), (16, 4), (4, 3)]
    assert torch.allclose(result.reconstruct(), low_rank_tensor, atol=1e-4)


def test_truncation_reports_a_positive_error(low_rank_tensor):
    result = TuckerConsolidator(ranks=[2, 2, 2]).decompose(low_rank_tensor)
    assert 0.05 < result.relative_error < 1.0
    measured = torch.linalg.norm(result.reconstruct() - low_rank_tensor) / torch.linalg.norm(low_rank_tensor)
    assert result.relative_error == pytest.approx(measured.item(), rel=1e-3)


@pytest.mark.parametrize(
    ("ranks", "shape", "expected"),
    [
        ((0.75, 0.5, 1.0), (20, 16, 4), (15, 8, 4)),
        ((0.3, 0.01, 1.0), (16, 20, 3), (5, 1, 3)),  # 4.8 rounds up; a tiny fraction is at least 1
        ((1.0, 1.0, 1.0), (7, 5, 2), (7, 5, 2)),
        ((3, 0.5, 2), (7, 5, 2), (3, 3, 2)),  # ints are absolute
    ],
)
def test_fractional_ranks_resolve(ranks, shape, expected):
    assert TuckerConsolidator(ranks=list(ranks)).resolve_ranks(shape) == expected


def test_invalid_ranks_raise(low_rank_tensor):
    with pytest.raises(ValueError, match=r"\[1, 20\]"):
        TuckerConsolidator(ranks=[21, 4, 3]).decompose(low_rank_tensor)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        TuckerConsolidator(ranks=[1.5, 1.0, 1.0])
    with pytest.raises(ValueError, match=">= 1"):
        TuckerConsolidator(ranks=[0, 1.0, 1.0])
    with pytest.raises(ValueError, match="3 entries"):
        TuckerConsolidator(ranks=[1.0, 1.0])
    with pytest.raises(ValueError, match="3-way"):
        TuckerConsolidator().decompose(torch.ones(4, 4))


def test_global_tensorly_backend_is_untouched(low_rank_tensor):
    before = tl.get_backend()
    TuckerConsolidator(ranks=[5, 4, 3]).decompose(low_rank_tensor)
    assert tl.get_backend() == before


def _random_tensor() -> torch.Tensor:
    return torch.randn(24, 18, 5, generator=torch.Generator().manual_seed(3))


def _spectrum(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    """Squared singular values of the mode unfolding, descending, in float64 (independent of the code under test)."""
    unfolding = tensor.double().movedim(mode, 0).reshape(tensor.shape[mode], -1)
    return torch.linalg.svdvals(unfolding) ** 2


@pytest.mark.filterwarnings("ignore:Trying to compute SVD")  # tensorly, at full rank in a mode
@pytest.mark.parametrize("algorithm", ["hooi", "hosvd"])
@pytest.mark.parametrize("kind", ["random", "low_rank"])
@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("ranks", [[None, None, 1.0], [None, None, None], [1.0, None, 1.0]])
def test_energy_ranks_explain_the_threshold_and_are_minimal(algorithm, kind, energy, ranks, low_rank_tensor):
    # Modes with given ranks keep full rank here: only then does the threshold bound the whole error.
    tensor = _random_tensor() if kind == "random" else low_rank_tensor
    result = TuckerConsolidator(ranks=ranks, energy=energy, algorithm=algorithm).decompose(tensor)
    assert result.algorithm == algorithm and result.energy == energy
    assert 1.0 - result.relative_error**2 >= energy
    chosen = [mode for mode, rank in enumerate(ranks) if rank is None]
    share = 1.0 - (1.0 - energy) / len(chosen)
    for mode, rank in enumerate(result.ranks):
        if mode not in chosen:
            assert result.mode_energy[mode] is None
            continue
        kept = torch.cumsum(_spectrum(tensor, mode), 0) / _spectrum(tensor, mode).sum()
        assert kept[rank - 1] >= share - 1e-9  # the rule holds at the chosen rank ...
        assert rank == 1 or kept[rank - 2] < share  # ... and fails one below it
        assert result.mode_energy[mode] == pytest.approx(kept[rank - 1].item(), abs=1e-5)


def test_energy_ranks_on_a_known_spectrum(low_rank_tensor):
    # The (5, 4, 3) tensor has exactly 5 and 4 non-zero singular values in modes 0 and 1: all but a rounding-error
    # share of the energy needs them all, and no more.
    result = TuckerConsolidator(ranks=[None, None, 3], energy=1.0 - 1e-9).decompose(low_rank_tensor)
    assert result.ranks == (5, 4, 3) and result.relative_error < 1e-4
    assert TuckerConsolidator(ranks=[None, 2, 1.0], energy=0.9).rank_bounds((20, 16, 4)) == (20, 2, 4)


def test_energy_settings_are_validated():
    with pytest.raises(ValueError, match="set energy"):
        TuckerConsolidator(ranks=[None, 1.0, 1.0])
    with pytest.raises(ValueError, match="no rank is None"):
        TuckerConsolidator(ranks=[1.0, 1.0, 1.0], energy=0.9)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"energy must lie in \(0, 1\]"):
            TuckerConsolidator(ranks=[None, 1.0, 1.0], energy=bad)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        TuckerConsolidator(algorithm="cp")
    with pytest.raises(ValueError, match="chosen by energy"):
        TuckerConsolidator(ranks=[None, 1.0, 1.0], energy=0.9).resolve_ranks((4, 4, 2))


def test_hosvd_recovers_exact_low_rank_with_orthonormal_ordered_factors(low_rank_tensor):
    result = TuckerConsolidator(ranks=[5, 4, 3], algorithm="hosvd").decompose(low_rank_tensor)
    assert result.algorithm == "hosvd" and result.ranks == (5, 4, 3) and result.core.dtype == torch.float32
    assert result.relative_error < 1e-5
    assert torch.allclose(result.reconstruct(), low_rank_tensor, atol=1e-5)
    for factor in result.factors:
        assert torch.allclose(factor.T @ factor, torch.eye(factor.shape[1]), atol=1e-5)
        # Signs are fixed: the largest-magnitude entry of every column is positive.
        assert bool((factor[factor.abs().argmax(0), torch.arange(factor.shape[1])] > 0).all())
    # Columns come by decreasing energy: the core's slices along each mode have non-increasing norms.
    slice_norms = torch.linalg.vector_norm(result.core, dim=(1, 2))
    assert bool((slice_norms[:-1] >= slice_norms[1:] - 1e-5).all())


def test_hosvd_error_is_the_measured_error_and_deterministic():
    tensor = _random_tensor()
    consolidator = TuckerConsolidator(ranks=[10, 9, 3], algorithm="hosvd")
    result = consolidator.decompose(tensor)
    measured = torch.linalg.norm(result.reconstruct() - tensor) / torch.linalg.norm(tensor)
    assert result.relative_error == pytest.approx(measured.item(), rel=1e-4)
    assert 0.3 < result.relative_error < 1.0
    again = consolidator.decompose(tensor)
    assert torch.equal(again.core, result.core) and all(map(torch.equal, again.factors, result.factors))
    # HOOI from the same point can only do as well or better; on this tensor ST-HOSVD is within 3 %.
    hooi = TuckerConsolidator(ranks=[10, 9, 3], algorithm="hooi").decompose(tensor)
    assert hooi.relative_error <= result.relative_error + 1e-6
    assert result.relative_error <= 1.03 * hooi.relative_error


def test_auto_takes_the_fast_path_above_the_threshold():
    consolidator = TuckerConsolidator(fast_path_numel=100)
    assert consolidator.choose_algorithm((5, 5, 4)) == "hooi"  # 100 elements: not above
    assert consolidator.choose_algorithm((5, 5, 5)) == "hosvd"
    assert TuckerConsolidator(algorithm="hooi", fast_path_numel=0).choose_algorithm((5, 5, 5)) == "hooi"
    assert consolidator.decompose(torch.randn(5, 5, 5)).algorithm == "hosvd"
    assert TuckerConsolidator().decompose(torch.randn(5, 5, 4)).algorithm == "hooi"
    described = TuckerConsolidator(ranks=[None, 0.5, 1.0], energy=0.8).describe()
    assert described["algorithm"] == "auto" and described["energy"] == 0.8 and described["ranks"] == [None, 0.5, 1.0]
    assert described["fast_path_numel"] == 4_194_304


def test_hosvd_processes_the_cheapest_mode_first():
    # OLMoE gate: shrinking the 1024-mode first leaves less work for the 2048-mode than the other way round.
    assert _processing_order((1024, 2048, 8), (768, 1536, 8)) == (0, 1, 2)
    assert _processing_order((2048, 1024, 8), (1536, 768, 8)) == (1, 0, 2)
