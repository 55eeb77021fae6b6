"""Tucker refinement of stacked expert matrices (DESIGN.md section 3).

A (d1 x d2 x n) tensor of n experts' matrices is decomposed into a core G (r1 x r2 x r3) and factors
U1 (d1 x r1), U2 (d2 x r2), U3 (n x r3). Truncating r1, r2 keeps the subspaces the experts share and drops the
rest, which is the "denoising" step before the experts are collapsed into one dense matrix.

Two algorithms: HOOI (tensorly, float64, iterated to convergence) and a sequentially truncated HOSVD
(ST-HOSVD: one eigendecomposition per mode in float32 torch), the fast path for large tensors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import tucker

Algorithm = Literal["auto", "hooi", "hosvd"]
ALGORITHMS = ("auto", "hooi", "hosvd")
DESCRIPTIONS = {
    "hooi": "HOOI (tensorly.decomposition.tucker, float64)",
    "hosvd": "sequentially truncated HOSVD (torch, float32 Gram eigendecompositions)",
}
# Below this relative error, ||X||^2 - ||G||^2 has lost too many digits to float32 rounding: the error of the
# fast path is then recomputed from the explicit float64 reconstruction.
_EXPLICIT_ERROR_BELOW = 1e-3


@dataclass
class TuckerFactors:
    """A Tucker decomposition: core (r1 x r2 x r3), factors [U1 (d1 x r1), U2 (d2 x r2), U3 (n x r3)].

    Attributes:
        algorithm: the algorithm that ran, `hooi` or `hosvd`.
        energy: the explained-energy threshold that chose some ranks, or None if all ranks were given.
        mode_energy: per mode, the share of that mode's unfolding energy kept by its rank (the sum of its leading
            squared singular values over the total); None for modes whose rank was given.
    """

    core: torch.Tensor
    factors: list[torch.Tensor]
    ranks: tuple[int, ...]
    relative_error: float
    algorithm: str = "hooi"
    energy: float | None = None
    mode_energy: list[float | None] | None = None

    def reconstruct(self) -> torch.Tensor:
        """X_hat = G x1 U1 x2 U2 x3 U3, as a (d1 x d2 x n) float32 tensor."""
        return _reconstruct64(self.core, self.factors).float()

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the decomposed tensor (d1, d2, n)."""
        return tuple(f.shape[0] for f in self.factors)


class TuckerConsolidator:
    """Tucker decomposition of a stack of expert matrices at given or energy-chosen ranks."""

    def __init__(
        self,
        ranks: Sequence[int | float | None] = (0.75, 0.75, 1.0),
        n_iter_max: int = 50,
        tol: float = 1e-7,
        init: str = "svd",
        energy: float | None = None,
        algorithm: Algorithm = "auto",
        fast_path_numel: int = 4_194_304,
    ):
        """
        Args:
            ranks: Tucker rank per mode (d1, d2, experts). An int is an absolute rank (>= 1); a float in (0, 1] is
                a fraction of that mode's size, rounded up, at least 1 (1.0 keeps the mode at full rank); None
                (YAML null) lets `energy` choose it.
            n_iter_max: maximum number of HOOI sweeps.
            tol: HOOI stops when the reconstruction error changes by less than this between sweeps.
            init: HOOI initialisation, `svd` (deterministic, truncated HOSVD) or `random`.
            energy: explained-energy threshold tau in (0, 1] for the modes whose rank is None; required exactly
                when some rank is None. With m such modes, each keeps the smallest rank r whose leading squared
                singular values of that mode's unfolding sum to at least 1 - (1 - tau) / m of the total. The
                truncated HOSVD's squared error is at most the sum of the discarded energies, and HOOI started
                from it (init `svd`) or ST-HOSVD only lower it, so 1 - relative_error^2 >= tau when the modes
                with given ranks keep full rank (a truncated given rank discards energy of its own on top).
            algorithm: `hooi` (tensorly HOOI in float64), `hosvd` (sequentially truncated HOSVD in float32
                torch: one Gram eigendecomposition per mode, the modes ordered so the tensor shrinks early), or
                `auto`: `hosvd` for tensors with more than `fast_path_numel` elements, else `hooi`.
            fast_path_numel: the element count above which `auto` takes the `hosvd` fast path.
        """
        if len(ranks) != 3:
            raise ValueError(f"ranks must have 3 entries (one per mode of a d1 x d2 x n tensor), got {list(ranks)}")
        for rank in ranks:
            _check_rank_spec(rank)
        if init not in ("svd", "random"):
            raise ValueError(f"init must be 'svd' or 'random', got '{init}'")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got '{algorithm}'")
        if fast_path_numel < 0:
            raise ValueError(f"fast_path_numel must be >= 0, got {fast_path_numel}")
        self.ranks = list(ranks)
        _check_energy(self.ranks, energy)
        self.n_iter_max = n_iter_max
        self.tol = tol
        self.init = init
        self.energy = energy
        self.algorithm = algorithm
        self.fast_path_numel = fast_path_numel

    @property
    def energy_modes(self) -> list[int]:
        """Modes whose rank the energy threshold chooses."""
        return [mode for mode, rank in enumerate(self.ranks) if rank is None]

    def choose_algorithm(self, shape: Sequence[int]) -> str:
        """The algorithm that runs for a tensor of `shape`: `hooi` or `hosvd`."""
        if self.algorithm != "auto":
            return self.algorithm
        return "hosvd" if math.prod(shape) > self.fast_path_numel else "hooi"

    def resolve_ranks(
        self, shape: Sequence[int], spectra: Mapping[int, torch.Tensor] | None = None
    ) -> tuple[int, int, int]:
        """Absolute ranks for a tensor of `shape`; raises ValueError if a rank is < 1 or exceeds its mode size.

        Args:
            shape: (d1, d2, n).
            spectra: per energy-chosen mode, the squared singular values of that mode's unfolding, descending
                (`decompose` computes them); without them those modes raise.
        """
        _check_shape(shape)
        share = None if self.energy is None else 1.0 - (1.0 - self.energy) / len(self.energy_modes)
        resolved = []
        for mode, (rank, size) in enumerate(zip(self.ranks, shape, strict=True)):
            if rank is not None:
                resolved.append(_fixed_rank(rank, size, mode))
            elif spectra is None or mode not in spectra:
                raise ValueError(f"the rank of mode {mode} is chosen by energy: it needs the tensor's spectrum")
            else:
                resolved.append(_energy_rank(spectra[mode], share))
        return tuple(resolved)

    def rank_bounds(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Ranks for `shape` without the tensor: an energy-chosen mode gets its size, the most it can keep."""
        _check_shape(shape)
        pairs = enumerate(zip(self.ranks, shape, strict=True))
        return tuple(size if rank is None else _fixed_rank(rank, size, mode) for mode, (rank, size) in pairs)

    def decompose(self, tensor: torch.Tensor) -> TuckerFactors:
        """Tucker decomposition of a (d1 x d2 x n) tensor, returned as float32 (relative error in float64).

        Energy-chosen ranks are resolved first, from the spectra of the tensor's unfoldings; then the algorithm
        that `choose_algorithm` names runs at the resolved ranks.
        """
        _check_shape(tensor.shape)
        algorithm = self.choose_algorithm(tensor.shape)
        work = tensor.detach().cpu().to(torch.float32 if algorithm == "hosvd" else torch.float64)
        spectra = {mode: _mode_spectrum(work, mode) for mode in self.energy_modes}
        ranks = self.resolve_ranks(work.shape, spectra)
        if algorithm == "hosvd":
            core, factors = st_hosvd(work, ranks)
            error = _projection_error(work, core, factors)
        else:
            core, factors, error = self._hooi(work, ranks)
        return TuckerFactors(
            core=core.float(),
            factors=[f.float().contiguous() for f in factors],
            ranks=ranks,
            relative_error=error,
            algorithm=algorithm,
            energy=self.energy,
            mode_energy=_kept_energy(spectra, ranks) if spectra else None,
        )

    def _hooi(self, tensor: torch.Tensor, ranks: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor], float]:
        """tensorly's HOOI in float64: (core, factors, relative error)."""
        array = tensor.numpy()
        # A thread-local numpy backend: the caller's global tensorly backend is left untouched.
        with tl.backend_context("numpy", local_threadsafe=True):
            core, factors = tucker(
                array, rank=list(ranks), n_iter_max=self.n_iter_max, tol=self.tol, init=self.init, random_state=0
            )
            approx = tl.tucker_to_tensor((core, factors))
        norm = float(np.linalg.norm(array))
        error = float(np.linalg.norm(array - approx)) / norm if norm > 0 else 0.0
        return torch.from_numpy(np.asarray(core)), [torch.from_numpy(np.asarray(f)) for f in factors], error

    def describe(self) -> dict:
        """JSON-able settings for manifests."""
        return {
            "ranks": list(self.ranks),
            "energy": self.energy,
            "algorithm": self.algorithm,
            "fast_path_numel": self.fast_path_numel,
            "algorithms": DESCRIPTIONS,
            "n_iter_max": self.n_iter_max,
            "tol": self.tol,
            "init": self.init,
        }


def st_hosvd(tensor: torch.Tensor, ranks: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sequentially truncated HOSVD in `tensor`'s dtype: (core, factors), factors' columns by decreasing energy.

    Each mode in turn (cheapest order first, see `_processing_order`) takes the leading eigenvectors of its Gram
    matrix, and the tensor is projected onto them before the next mode, so later Grams are smaller.
    """
    core = tensor
    factors: list[torch.Tensor] = [torch.empty(0)] * tensor.ndim
    for mode in _processing_order(tensor.shape, ranks):
        unfolding = core.movedim(mode, 0).reshape(core.shape[mode], -1)
        basis = _leading_eigenvectors(_gram(unfolding), ranks[mode])
        others = [size for i, size in enumerate(core.shape) if i != mode]
        core = (basis.T @ unfolding).reshape(ranks[mode], *others).movedim(0, mode)
        factors[mode] = basis
    return core.contiguous(), factors


def _processing_order(shape: Sequence[int], ranks: Sequence[int]) -> tuple[int, ...]:
    """The mode order of least work: a step on a tensor of N elements costs ~(d + 2 r) N (Gram + projection)."""

    def cost(order: tuple[int, ...]) -> int:
        size, total = math.prod(shape), 0
        for mode in order:
            total += (shape[mode] + 2 * ranks[mode]) * size
            size = size // shape[mode] * ranks[mode]
        return total

    return min(itertools.permutations(range(len(shape))), key=cost)


def _gram(unfolding: torch.Tensor) -> torch.Tensor:
    """unfolding @ unfolding.T."""
    return unfolding @ unfolding.T


def _leading_eigenvectors(gram: torch.Tensor, rank: int) -> torch.Tensor:
    """The `rank` leading eigenvectors of a symmetric matrix, by decreasing eigenvalue, with a fixed sign."""
    _, vectors = torch.linalg.eigh(gram)
    basis = vectors[:, -rank:].flip(1)
    # eigh's signs are arbitrary: the largest-magnitude entry of each column is made positive, so results do not
    # depend on the LAPACK build.
    pivots = basis.abs().argmax(dim=0)
    signs = torch.where(basis[pivots, torch.arange(rank)] < 0, -1.0, 1.0).to(basis.dtype)
    return (basis * signs).contiguous()


def _mode_spectrum(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    """Squared singular values of the mode-`mode` unfolding, descending, as float64 (eigenvalues of its Gram)."""
    unfolding = tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)
    return torch.linalg.eigvalsh(_gram(unfolding)).flip(0).double().clamp_min(0.0)


def _energy_rank(spectrum: torch.Tensor, share: float) -> int:
    """The smallest r whose r leading values of `spectrum` (descending) sum to at least `share` of the total."""
    cumulative = torch.cumsum(spectrum, 0)
    # The total is the last partial sum, so share = 1 is always reached, at the full rank at the latest.
    return int((cumulative < share * cumulative[-1]).sum()) + 1


def _kept_energy(spectra: Mapping[int, torch.Tensor], ranks: Sequence[int]) -> list[float | None]:
    """Per mode, the share of its unfolding's energy that its rank keeps; None for modes without a spectrum."""
    return [float(spectra[m][:r].sum() / spectra[m].sum()) if m in spectra else None for m, r in enumerate(ranks)]


def _projection_error(tensor: torch.Tensor, core: torch.Tensor, factors: Sequence[torch.Tensor]) -> float:
    """||X - X_hat|| / ||X|| in float64, from ||X||^2 - ||G||^2 (G is X projected onto orthonormal factors)."""
    norm_sq = torch.linalg.vector_norm(tensor, dtype=torch.float64).item() ** 2
    if norm_sq == 0.0:
        return 0.0
    error = math.sqrt(max(norm_sq - torch.linalg.vector_norm(core, dtype=torch.float64).item() ** 2, 0.0) / norm_sq)
    if error < _EXPLICIT_ERROR_BELOW:
        diff = tensor.double() - _reconstruct64(core, factors)
        error = torch.linalg.vector_norm(diff).item() / math.sqrt(norm_sq)
    return error


def _reconstruct64(core: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """G x1 U1 x2 U2 x3 U3 in float64."""
    u1, u2, u3 = (f.double() for f in factors)
    return torch.einsum("abc,ia,jb,kc->ijk", core.double(), u1, u2, u3)


def _check_shape(shape: Sequence[int]) -> None:
    if len(shape) != 3:
        raise ValueError(f"Tucker consolidation expects a 3-way (d1 x d2 x n) tensor, got shape {tuple(shape)}")


def _fixed_rank(rank: int | float, size: int, mode: int) -> int:
    """An absolute rank, or a fraction of `size` rounded up (the epsilon absorbs float noise), at least 1."""
    value = min(size, max(1, math.ceil(rank * size - 1e-9))) if isinstance(rank, float) else int(rank)
    if value < 1 or value > size:
        raise ValueError(f"rank {rank} for mode {mode} is invalid: it must lie in [1, {size}] (the mode size)")
    return value


def _check_rank_spec(rank: int | float | None) -> None:
    if rank is None:
        return
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise ValueError(f"a rank must be an int, a float fraction or None (chosen by energy), got {rank!r}")
    if isinstance(rank, float) and not 0.0 < rank <= 1.0:
        raise ValueError(f"a fractional rank must lie in (0, 1], got {rank}")
    if isinstance(rank, int) and rank < 1:
        raise ValueError(f"an absolute rank must be >= 1, got {rank}")


def _check_energy(ranks: Sequence[int | float | None], energy: float | None) -> None:
    chosen = [mode for mode, rank in enumerate(ranks) if rank is None]
    if chosen and energy is None:
        raise ValueError(f"ranks {list(ranks)} leave modes {chosen} to the energy threshold: set energy in (0, 1]")
    if energy is not None and not chosen:
        raise ValueError(
            f"energy={energy} is given but no rank is None: put None (YAML null) for the modes it should choose"
        )
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must lie in (0, 1], got {energy}")


def collapse(core: torch.Tensor, factors: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """W = G x1 U1 x2 U2 x3 (w^T U3): a (d1 x d2) matrix, computed in float64 and returned as float32.

    Args:
        core: Tucker core G (r1 x r2 x r3).
        factors: [U1 (d1 x r1), U2 (d2 x r2), U3 (n x r3)].
        weights: expert weights w (n,), normally summing to 1.
    """
    u1, u2, u3 = (f.double() for f in factors)
    w = weights.double().reshape(-1)
    if w.shape[0] != u3.shape[0]:
        raise ValueError(f"{w.shape[0]} weights for {u3.shape[0]} experts")
    mixed = w @ u3  # (r3,): the expert mode contracted with the weights
    inner = torch.tensordot(core.double(), mixed, dims=([2], [0]))  # (r1 x r2)
    return (u1 @ inner @ u2.T).float()
