"""Tucker refinement of stacked expert matrices (DESIGN.md section 3).

A (d1 x d2 x n) tensor of n experts' matrices is decomposed by HOOI into a core G (r1 x r2 x r3) and factors
U1 (d1 x r1), U2 (d2 x r2), U3 (n x r3). Truncating r1, r2 keeps the subspaces the experts share and drops the
rest, which is the "denoising" step before the experts are collapsed into one dense matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import tucker


@dataclass
class TuckerFactors:
    """A Tucker decomposition: core (r1 x r2 x r3), factors [U1 (d1 x r1), U2 (d2 x r2), U3 (n x r3)]."""

    core: torch.Tensor
    factors: list[torch.Tensor]
    ranks: tuple[int, ...]
    relative_error: float

    def reconstruct(self) -> torch.Tensor:
        """X_hat = G x1 U1 x2 U2 x3 U3, as a (d1 x d2 x n) float32 tensor."""
        u1, u2, u3 = (f.double() for f in self.factors)
        return torch.einsum("abc,ia,jb,kc->ijk", self.core.double(), u1, u2, u3).float()

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the decomposed tensor (d1, d2, n)."""
        return tuple(f.shape[0] for f in self.factors)


class TuckerConsolidator:
    """Tucker (HOOI) decomposition of a stack of expert matrices at configurable ranks."""

    def __init__(
        self,
        ranks: Sequence[float | int] = (0.75, 0.75, 1.0),
        n_iter_max: int = 50,
        tol: float = 1e-7,
        init: str = "svd",
    ):
        """
        Args:
            ranks: Tucker rank per mode (d1, d2, experts). An int is an absolute rank (>= 1); a float in (0, 1] is
                a fraction of that mode's size, rounded up, at least 1 (1.0 keeps the mode at full rank).
            n_iter_max: maximum number of HOOI sweeps.
            tol: HOOI stops when the reconstruction error changes by less than this between sweeps.
            init: HOOI initialisation, `svd` (deterministic, truncated HOSVD) or `random`.
        """
        if len(ranks) != 3:
            raise ValueError(f"ranks must have 3 entries (one per mode of a d1 x d2 x n tensor), got {list(ranks)}")
        for rank in ranks:
            _check_rank_spec(rank)
        if init not in ("svd", "random"):
            raise ValueError(f"init must be 'svd' or 'random', got '{init}'")
        self.ranks = list(ranks)
        self.n_iter_max = n_iter_max
        self.tol = tol
        self.init = init

    def resolve_ranks(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Absolute ranks for a tensor of `shape`; raises ValueError if a rank is < 1 or exceeds its mode size."""
        if len(shape) != 3:
            raise ValueError(f"Tucker consolidation expects a 3-way (d1 x d2 x n) tensor, got shape {tuple(shape)}")
        resolved = []
        for mode, (rank, size) in enumerate(zip(self.ranks, shape, strict=True)):
            # Fractions round up so that a small fraction never yields rank 0 (the epsilon absorbs float noise).
            value = min(size, max(1, math.ceil(rank * size - 1e-9))) if isinstance(rank, float) else int(rank)
            if value < 1 or value > size:
                raise ValueError(f"rank {rank} for mode {mode} is invalid: it must lie in [1, {size}] (the mode size)")
            resolved.append(value)
        return tuple(resolved)

    def decompose(self, tensor: torch.Tensor) -> TuckerFactors:
        """HOOI Tucker decomposition of a (d1 x d2 x n) tensor, computed in float64, returned as float32."""
        ranks = self.resolve_ranks(tensor.shape)
        array = tensor.detach().cpu().double().numpy()
        # A thread-local numpy backend: the caller's global tensorly backend is left untouched.
        with tl.backend_context("numpy", local_threadsafe=True):
            core, factors = tucker(
                array, rank=list(ranks), n_iter_max=self.n_iter_max, tol=self.tol, init=self.init, random_state=0
            )
            approx = tl.tucker_to_tensor((core, factors))
        norm = float(np.linalg.norm(array))
        error = float(np.linalg.norm(array - approx)) / norm if norm > 0 else 0.0
        return TuckerFactors(
            core=torch.from_numpy(np.asarray(core)).float(),
            factors=[torch.from_numpy(np.asarray(f)).float() for f in factors],
            ranks=ranks,
            relative_error=error,
        )

    def describe(self) -> dict:
        """JSON-able settings for manifests."""
        return {
            "ranks": list(self.ranks),
            "n_iter_max": self.n_iter_max,
            "tol": self.tol,
            "init": self.init,
            "algorithm": "HOOI (tensorly.decomposition.tucker)",
        }


def _check_rank_spec(rank: float | int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise ValueError(f"a rank must be an int or a float fraction, got {rank!r}")
    if isinstance(rank, float) and not 0.0 < rank <= 1.0:
        raise ValueError(f"a fractional rank must lie in (0, 1], got {rank}")
    if isinstance(rank, int) and rank < 1:
        raise ValueError(f"an absolute rank must be >= 1, got {rank}")
