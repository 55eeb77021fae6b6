"""Adaptation of dense source-shaped FFN matrices to a student's width and depth (DESIGN.md section 5).

Every expert-based initializer makes a `SourceFFN` (one dense gate/up/down triple per source layer, in the
source's shape) and `fit_ffn` writes it into the student with the kit's documented rules (the options are
`xpert_pl.initializers.FFNTransfer`'s); `WithSourceWeights` adapts attention and embeddings with the same
hidden-size and depth rules. The rules:
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

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from xpert_pl.sources.families import MATRICES

RescaleMode = Literal["expert_norm", "target_init", "none"]
DepthStrategy = Literal["uniform", "first", "grouped"]
NeuronSelection = Literal["energy", "uniform"]
WiderFFN = Literal["scratch", "split"]
PROJ = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


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


class UnsupportedStudentError(ValueError):
    """The student has no `model.layers[j].mlp.{gate,up,down}_proj` SwiGLU layout."""


def student_mlps(model: nn.Module) -> list[nn.Module]:
    """The SwiGLU MLP module of every decoder layer; raises UnsupportedStudentError if the layout differs."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise UnsupportedStudentError(
            f"{type(model).__name__} has no `model.layers`: FFN transfer needs a Llama-style decoder"
        )
    mlps = []
    for j, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is None or not all(isinstance(getattr(mlp, p, None), nn.Linear) for p in PROJ.values()):
            raise UnsupportedStudentError(
                f"layer {j} of {type(model).__name__} has no mlp.gate_proj/up_proj/down_proj linear layers "
                "(a dense SwiGLU FFN is required; MoE students are not supported)"
            )
        mlps.append(mlp)
    return mlps


@dataclass
class SourceFFN:
    """Dense FFN matrices in the source's shape, one gate/up/down triple per source layer.

    Attributes:
        layers: source layer (or layer group) -> {"gate": (I x H), "up": (I x H), "down": (H x I)}.
        expert_norms: per layer and matrix, the mean Frobenius norm of the experts the matrix was made from
            (the `expert_norm` rescaling target); None when the matrices are not averages of experts.
        description: JSON-able facts for the initializer's report (what was read, selected, decomposed).
    """

    layers: dict[int, dict[str, torch.Tensor]]
    expert_norms: dict[int, dict[str, float]] | None = None
    description: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a SourceFFN needs at least one layer")
        shapes = {tuple(tuple(mats[m].shape) for m in MATRICES) for mats in self.layers.values()}
        (gate, up, down), *others = shapes
        if others or gate != up or down != gate[::-1]:
            raise ValueError(f"inconsistent FFN shapes (gate, up, down) across layers: {sorted(shapes)}")

    @property
    def source_layers(self) -> list[int]:
        return sorted(self.layers)

    @property
    def intermediate_size(self) -> int:
        return self.layers[self.source_layers[0]]["gate"].shape[0]

    @property
    def hidden_size(self) -> int:
        return self.layers[self.source_layers[0]]["gate"].shape[1]


def hidden_indices(source: int, target: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(source hidden indices to read, student hidden positions to write); None means all of them."""
    if target == source:
        return None, None
    if target < source:
        return select_hidden(source, target), None
    return None, spread_hidden(source, target)


def hidden_rule(source: int, target: int) -> str:
    """The report's description of how hidden dimensions were chosen."""
    if target == source:
        return "identity"
    if target < source:
        return "uniform element selection"
    return "spread: source dimensions at evenly spaced positions, the rest keep scratch init"


def write_block(weight: torch.Tensor, block: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None):
    """Copy `block` into the (rows x cols) cells of `weight` (None: all rows / columns; 1-D weights use rows)."""
    rows = torch.arange(weight.shape[0]) if rows is None else rows
    block = block.to(dtype=weight.dtype, device=weight.device)
    if weight.ndim == 1:
        weight[rows] = block
        return
    cols = torch.arange(weight.shape[1]) if cols is None else cols
    weight[rows[:, None], cols[None, :]] = block


@torch.no_grad()
def fit_ffn(
    model: nn.Module,
    source: SourceFFN,
    rescale_mode: RescaleMode = "expert_norm",
    depth_strategy: DepthStrategy = "uniform",
    neuron_selection: NeuronSelection = "energy",
    wider_ffn: WiderFFN = "scratch",
    seed: int = 0,
) -> tuple[list[str], dict[str, Any]]:
    """Overwrite the student's gate/up/down weights with `source` adapted to its shape (the options are those of
    `xpert_pl.initializers.FFNTransfer`); returns the parameter names set and a JSON-able report."""
    mlps = student_mlps(model)
    if rescale_mode == "expert_norm" and source.expert_norms is None:
        raise ValueError("rescale='expert_norm' needs expert norms, which this initializer's source lacks")
    names = {id(p): n for n, p in model.named_parameters()}
    hidden_t, inter_t = mlps[0].gate_proj.weight.shape[1], mlps[0].gate_proj.weight.shape[0]
    hidden_src, hidden_dst = hidden_indices(source.hidden_size, hidden_t)
    mapping = depth_map(len(source.source_layers), len(mlps), depth_strategy)
    generator = torch.Generator().manual_seed(seed)
    set_parameters, layer_reports = [], []
    for j, mlp in enumerate(mlps):
        layer = source.source_layers[mapping[j]]
        dense = _rescaled(source, layer, rescale_mode)
        rows, shares = _neurons(dense, inter_t, generator, neuron_selection, wider_ffn)
        blocks = _blocks(dense, rows, shares, hidden_src)
        target_init = rescale_mode == "target_init"
        matrices = {
            m: _write(getattr(mlp, PROJ[m]).weight, m, block, hidden_dst, target_init) for m, block in blocks.items()
        }
        set_parameters += [names[id(getattr(mlp, PROJ[m]).weight)] for m in MATRICES]
        rule = _neuron_rule(source.intermediate_size, inter_t, neuron_selection, wider_ffn)
        layer_reports.append(
            {
                "target_layer": j,
                "source_layer": layer,
                "neuron_selection": rule,
                "neurons_set": len(rows),
                "matrices": matrices,
            }
        )
    details = {
        "rescale": rescale_mode,
        "depth_strategy": depth_strategy,
        "depth_map": [source.source_layers[i] for i in mapping],
        "source_shape": {"hidden": source.hidden_size, "intermediate": source.intermediate_size},
        "target_shape": {"hidden": hidden_t, "intermediate": inter_t, "layers": len(mlps)},
        "hidden_selection": hidden_rule(source.hidden_size, hidden_t),
        "layers": layer_reports,
    }
    return set_parameters, details


def _rescaled(source: SourceFFN, layer: int, rescale_mode: RescaleMode) -> dict[str, torch.Tensor]:
    dense = source.layers[layer]
    if rescale_mode != "expert_norm":
        return dense
    return {m: rescale(dense[m], source.expert_norms[layer][m]) for m in MATRICES}


def _neurons(
    dense: dict[str, torch.Tensor],
    target: int,
    generator: torch.Generator,
    neuron_selection: NeuronSelection,
    wider_ffn: WiderFFN,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Source neuron per written target neuron, and each one's down-column multiplier (None: 1)."""
    size = dense["gate"].shape[0]
    if target >= size:
        if wider_ffn == "split":
            return split_neurons(size, target, generator)
        return torch.arange(size), None
    if neuron_selection == "uniform":
        return uniform_indices(size, target), None
    return select_neurons(dense["gate"], dense["up"], dense["down"], target), None


def _write(
    weight: torch.Tensor, matrix: str, block: torch.Tensor, hidden_dst: torch.Tensor | None, target_init: bool
) -> dict[str, float]:
    """Copy `block` into the written region of `weight`; returns the matrix's norms for the report."""
    hidden = torch.arange(weight.shape[0 if matrix == "down" else 1]) if hidden_dst is None else hidden_dst
    neurons = torch.arange(block.shape[1] if matrix == "down" else block.shape[0])
    rows, cols = (hidden, neurons) if matrix == "down" else (neurons, hidden)
    before = float(torch.linalg.matrix_norm(weight.double()))
    if target_init:  # the norm of the student's fresh values that the block overwrites
        block = rescale(block, float(torch.linalg.matrix_norm(weight[rows[:, None], cols[None, :]].double())))
    write_block(weight, block, rows, cols)
    return {
        "block_norm": float(torch.linalg.matrix_norm(block.double())),
        "norm_before": before,
        "norm_after": float(torch.linalg.matrix_norm(weight.double())),
    }


def _neuron_rule(source: int, target: int, neuron_selection: NeuronSelection, wider_ffn: WiderFFN) -> str:
    """The report's description of how intermediate neurons were chosen."""
    if target < source:
        return "top-energy" if neuron_selection == "energy" else "uniform"
    if target == source:
        return "all"
    if wider_ffn == "split":
        return f"all {source}, split into {target} (function-preserving)"
    return f"all {source} into the first neurons; the rest keep scratch init"


def _blocks(dense: dict[str, torch.Tensor], rows: torch.Tensor, shares: torch.Tensor | None, hidden):
    """The values to write: chosen neurons (rows of gate/up, columns of down) and chosen hidden dimensions."""
    gate, up, down = dense["gate"][rows], dense["up"][rows], dense["down"][:, rows]
    if shares is not None:
        down = down * shares
    if hidden is not None:
        gate, up, down = gate[:, hidden], up[:, hidden], down[hidden]
    return {"gate": gate, "up": up, "down": down}
