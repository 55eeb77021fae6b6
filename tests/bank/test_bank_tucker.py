"""Tucker consolidation: exact recovery of low multilinear rank, rank resolution and validation."""

from __future__ import annotations

import pytest
import tensorly as tl
import torch

from xpert_pl.bank import TuckerConsolidator


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
