"""Fixtures for the initializer tests: small synthetic knowledge banks and seeded dense students."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from xpert_pl.bank import BankEntry, KnowledgeBank, TuckerConsolidator
from xpert_pl.models import DenseStudent
from xpert_pl.sources.experts import MATRICES

HIDDEN, INTERMEDIATE = 32, 64


def random_experts(num_layers: int, n: int, seed: int) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer and matrix, n random experts stacked as (d1 x d2 x n), in nn.Linear orientation."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"gate": (INTERMEDIATE, HIDDEN), "up": (INTERMEDIATE, HIDDEN), "down": (HIDDEN, INTERMEDIATE)}
    return {layer: {m: 0.02 * torch.randn(*shapes[m], n, generator=g) for m in MATRICES} for layer in range(num_layers)}


def build_bank(stacks: dict[int, dict[str, torch.Tensor]], weights: list[float], out_dir: Path) -> Path:
    """Decompose the stacks at full rank into a bank (as the extract step does) and save it."""
    consolidator = TuckerConsolidator(ranks=[1.0, 1.0, 1.0], n_iter_max=5)
    entries = {
        layer: {
            m: BankEntry(consolidator.decompose(x), float(torch.linalg.matrix_norm(x.permute(2, 0, 1)).mean()))
            for m, x in per_matrix.items()
        }
        for layer, per_matrix in stacks.items()
    }
    n = len(weights)
    bank = KnowledgeBank(
        entries=entries,
        weights={layer: torch.tensor(weights) for layer in stacks},
        experts={layer: list(range(n)) for layer in stacks},
        manifest={"source": {"synthetic": True}},
    )
    return bank.save(out_dir)


@pytest.fixture(scope="session")
def distinct_experts() -> dict[int, dict[str, torch.Tensor]]:
    """Four source layers of three different experts each."""
    return random_experts(num_layers=4, n=3, seed=0)


@pytest.fixture(scope="session")
def distinct_bank(distinct_experts, tmp_path_factory) -> Path:
    return build_bank(distinct_experts, [0.5, 0.3, 0.2], tmp_path_factory.mktemp("distinct") / "bank")


@pytest.fixture(scope="session")
def identical_experts() -> dict[int, dict[str, torch.Tensor]]:
    """Two source layers whose two selected experts are the same matrix (one expert per layer)."""
    single = random_experts(num_layers=2, n=1, seed=1)
    return {layer: {m: x.repeat(1, 1, 2) for m, x in per.items()} for layer, per in single.items()}


@pytest.fixture(scope="session")
def identical_bank(identical_experts, tmp_path_factory) -> Path:
    return build_bank(identical_experts, [0.6, 0.4], tmp_path_factory.mktemp("identical") / "bank")


@pytest.fixture
def make_student() -> Callable[..., torch.nn.Module]:
    """A seeded dense student: the same seed gives the same scratch weights."""

    def make(hidden: int = HIDDEN, intermediate: int = INTERMEDIATE, layers: int = 2, seed: int = 0):
        torch.manual_seed(seed)
        overrides = {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers}
        return DenseStudent(overrides=overrides).build(vocab_size=97)

    return make
