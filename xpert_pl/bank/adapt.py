"""Collapse bank entries to dense matrices and adapt them to a student's shape (DESIGN.md sections 4-5).

Pure functions on tensors; the rules are the kit's documented choices:
- collapse: W = G x1 U1 x2 U2 x3 (w^T U3), the weighted combination of the Tucker-denoised experts;
- rescale: W * target_norm / ||W||_F (averages of near-orthogonal experts shrink);
- depth: uniform stride with round-half-up, or the first L_t layers;
- FFN width: keep the highest-energy intermediate neurons, same indices in gate, up and down;
- hidden size: uniform element selection (Weight Selection), same indices in every matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

RescaleMode = Literal["expert_norm", "target_init", "none"]
DepthStrategy = Literal["uniform", "first"]


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


def rescale(matrix: torch.Tensor, target_norm: float) -> torch.Tensor:
    """`matrix` scaled to Frobenius norm `target_norm` (a zero matrix is returned unchanged)."""
    if target_norm < 0:
        raise ValueError(f"target_norm must be >= 0, got {target_norm}")
    norm = torch.linalg.matrix_norm(matrix.double()).item()
    if norm == 0.0:
        return matrix.clone()
    return (matrix.double() * (target_norm / norm)).to(matrix.dtype)


def _round_half_up_ratio(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) with halves rounded up, in exact integer arithmetic."""
    return (2 * numerator + denominator) // (2 * denominator)


def depth_map(num_source: int, num_target: int, strategy: DepthStrategy = "uniform") -> list[int]:
    """Source layer (position in the bank's source layers) for each target layer j.

    uniform: round(j (L_s - 1) / (L_t - 1)), halves rounded up, so the first and last layers are kept
    (4 -> 2: [0, 3]; 16 -> 8: [0, 2, 4, 6, 9, 11, 13, 15]); a single target layer takes source layer 0, the
    j = 0 value of the same rule. L_t > L_s repeats source layers.
    first: j (the first L_t source layers); L_t > L_s is an error.
    """
    if num_source < 1 or num_target < 1:
        raise ValueError(f"layer counts must be >= 1, got num_source={num_source}, num_target={num_target}")
    if strategy == "uniform":
        if num_target == 1:
            return [0]
        return [_round_half_up_ratio(j * (num_source - 1), num_target - 1) for j in range(num_target)]
    if strategy == "first":
        if num_target > num_source:
            raise ValueError(f"depth strategy 'first' needs num_target <= num_source, got {num_target} > {num_source}")
        return list(range(num_target))
    raise ValueError(f"unknown depth strategy '{strategy}'; choose 'uniform' or 'first'")


def neuron_energy(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Energy of each intermediate neuron i: ||gate[i]||^2 + ||up[i]||^2 + ||down[:, i]||^2."""
    if gate.shape != up.shape or down.shape != gate.shape[::-1]:
        raise ValueError(
            "expected gate/up (I x H) and down (H x I), got "
            f"{tuple(gate.shape)}, {tuple(up.shape)}, {tuple(down.shape)}"
        )
    return gate.double().pow(2).sum(1) + up.double().pow(2).sum(1) + down.double().pow(2).sum(0)


def select_neurons(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, target_intermediate: int):
    """Indices (ascending LongTensor) of the `target_intermediate` highest-energy neurons.

    Ties keep the lower index (stable sort). If target_intermediate >= I_s all I_s indices are returned; the
    caller fills the first I_s target neurons and leaves the rest at scratch init.
    """
    if target_intermediate < 1:
        raise ValueError(f"target_intermediate must be >= 1, got {target_intermediate}")
    energy = neuron_energy(gate, up, down)
    if target_intermediate >= energy.shape[0]:
        return torch.arange(energy.shape[0], dtype=torch.long)
    order = torch.argsort(energy, descending=True, stable=True)[:target_intermediate]
    return torch.sort(order).values


def select_hidden(source_hidden: int, target_hidden: int) -> torch.Tensor:
    """Uniform element selection of hidden indices (Weight Selection): round-half-up of linspace(0, H_s - 1, H_t).

    The indices are strictly increasing and include 0 and H_s - 1 (H_t = 1 gives [0]).
    """
    if target_hidden < 1 or source_hidden < 1:
        raise ValueError(f"hidden sizes must be >= 1, got source={source_hidden}, target={target_hidden}")
    if target_hidden > source_hidden:
        raise ValueError(
            f"target hidden size {target_hidden} exceeds the source's {source_hidden}: uniform element selection "
            "can only shrink the hidden size; a wider student cannot be initialised from this bank"
        )
    if target_hidden == 1:
        return torch.zeros(1, dtype=torch.long)
    span = source_hidden - 1
    return torch.tensor(
        [_round_half_up_ratio(j * span, target_hidden - 1) for j in range(target_hidden)], dtype=torch.long
    )
