"""Fixtures for the knowledge-bank tests: exactly low-rank tensors, a tiny OLMoE and a selection for it."""

from __future__ import annotations

import pytest
import torch

from xpert_pl.bank import KnowledgeBank, TuckerConsolidator, extract_bank
from xpert_pl.models import OlmoeSource


def orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A (rows x cols) matrix with orthonormal columns."""
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q


@pytest.fixture
def low_rank_tensor() -> torch.Tensor:
    """A 20 x 16 x 4 tensor of exact multilinear rank (5, 4, 3)."""
    g = torch.Generator().manual_seed(0)
    core = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    u1, u2, u3 = orthonormal(20, 5, g), orthonormal(16, 4, g), orthonormal(4, 3, g)
    return torch.einsum("abc,ia,jb,kc->ijk", core, u1, u2, u3).float()


@pytest.fixture(scope="session")
def olmoe():
    """A narrower OLMoE than the tiny preset (H=32, I=64) so that the decompositions take milliseconds."""
    torch.manual_seed(0)
    return OlmoeSource(overrides={"hidden_size": 32, "intermediate_size": 64}).build(vocab_size=97)


def make_selection(num_layers: int = 4) -> dict:
    """A selection in the analysis step's schema: two experts per layer with unequal weights."""
    return {
        "strategy": "consistency",
        "n": 2,
        "num_experts": 8,
        "top_k": 2,
        "domains": ["code", "web"],
        "score": "min_domain_frequency",
        "layers": [
            {"layer": i, "experts": [i, (i + 3) % 8], "weights": [0.7, 0.3], "scores": [1.2, 1.0]}
            for i in range(num_layers)
        ],
    }


@pytest.fixture
def selection() -> dict:
    return make_selection()


@pytest.fixture(scope="session")
def selection_of():
    """`make_selection`, for tests that need a selection of their own size."""
    return make_selection


@pytest.fixture(scope="session")
def small_bank(olmoe) -> KnowledgeBank:
    """A bank of the first two source layers at truncated ranks (few HOOI sweeps keep it fast)."""
    selection = make_selection()
    selection["layers"] = selection["layers"][:2]
    consolidator = TuckerConsolidator(ranks=[0.5, 0.5, 1.0], n_iter_max=10)
    return extract_bank(olmoe, selection, consolidator, source_description={"class": "OlmoeSource"}, progress=False)
