"""Collapse bank entries to dense matrices and adapt them to a student's shape (DESIGN.md sections 4-5).

Pure functions on tensors; the rules are the kit's documented choices:
- collapse: W = G x1 U1 x2 U2 x3 (w^T U3), the weighted combination of the Tucker-denoised experts;
- rescale: W * target_norm / ||W||_F (averages of near-orthogonal experts shrink);
- depth: uniform stride with round-half-up, the first L_t layers, or one bank layer per target layer (a bank
  whose source layers were grouped before Tucker);
- FFN width: keep the highest-energy intermediate neurons (or evenly spaced ones, as Weight Selection), same
  indices in gate, up and down; a wider FFN either leaves the extra neurons at scratch init or splits neurons
  so that the FFN computes the same function (Net2WiderNet);
- hidden size: uniform element selection (Weight Selection), same indices in every matrix; a wider student
  receives the source's hidden dimensions at evenly spread positions, the rest keep scratch init.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

RescaleMode = Literal["expert_norm", "target_init", "none"]
DepthStrategy = Literal["uniform", "first", "grouped"]


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
    grouped: j, for a bank built with one (grouped) layer per target layer; L_t != L_s is an error.
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
    if strategy == "grouped":
        if num_target != num_source:
            raise ValueError(
                f"depth strategy 'grouped' needs a bank with one layer group per student layer, got {num_source} "
                f"groups for {num_target} layers: re-run `xpert extract --group_layers {num_target}`"
            )
        return list(range(num_target))
    raise ValueError(f"unknown depth strategy '{strategy}'; choose 'uniform', 'first' or 'grouped'")


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


def uniform_indices(size: int, count: int) -> torch.Tensor:
    """`count` evenly spaced indices of range(size): round-half-up of linspace(0, size - 1, count).

    Strictly increasing, including 0 and size - 1 (count = 1 gives [0]); count must lie in [1, size].
    """
    if not 1 <= count <= size:
        raise ValueError(f"cannot pick {count} evenly spaced indices out of {size}")
    if count == 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.tensor([_round_half_up_ratio(j * (size - 1), count - 1) for j in range(count)], dtype=torch.long)


def select_hidden(source_hidden: int, target_hidden: int) -> torch.Tensor:
    """Uniform element selection of hidden indices (Weight Selection): `uniform_indices(H_s, H_t)`.

    Only shrinks; for a wider student see `spread_hidden`.
    """
    if target_hidden < 1 or source_hidden < 1:
        raise ValueError(f"hidden sizes must be >= 1, got source={source_hidden}, target={target_hidden}")
    if target_hidden > source_hidden:
        raise ValueError(
            f"target hidden size {target_hidden} exceeds the source's {source_hidden}: uniform element selection "
            "can only shrink the hidden size (use spread_hidden for a wider student)"
        )
    return uniform_indices(source_hidden, target_hidden)


def spread_hidden(source_hidden: int, target_hidden: int) -> torch.Tensor:
    """Positions in a wider student's hidden size that receive the source's H_s hidden dimensions, in order.

    The mirror of uniform element selection: `uniform_indices(H_t, H_s)`; the other positions keep scratch init.
    """
    if target_hidden < source_hidden:
        raise ValueError(f"spread_hidden widens: target {target_hidden} < source {source_hidden}")
    return uniform_indices(target_hidden, source_hidden)


def split_neurons(source_intermediate: int, target_intermediate: int, generator: torch.Generator):
    """Net2WiderNet for a SwiGLU FFN: which source neuron each target neuron copies, and its down-column share.

    Target neuron t < I_s copies neuron t; the extra neurons copy neurons 0, 1, ... in turn. The copies of one
    neuron share its down column in random positive proportions summing to 1, so the widened FFN computes the
    same function while the copies receive different gradients (equal shares would never break the symmetry).

    Returns:
        (source index per target neuron (I_t,), multiplier of each target neuron's down column (I_t,)).
    """
    if target_intermediate < source_intermediate:
        raise ValueError(f"split_neurons widens: target {target_intermediate} < source {source_intermediate}")
    rows = torch.arange(target_intermediate) % source_intermediate
    raw = torch.rand(target_intermediate, generator=generator, dtype=torch.float64) + 0.5  # in [0.5, 1.5)
    totals = torch.zeros(source_intermediate, dtype=torch.float64).index_add_(0, rows, raw)
    return rows, (raw / totals[rows]).float()
