"""Fitting source-shaped dense FFN matrices into a student's FFN layers (DESIGN.md section 5).

Every expert-based initializer produces a `SourceFFN` (one dense gate/up/down triple per source layer, in the
source's shape) and hands it to `FFNTransfer`, which applies the kit's documented adaptation rules: depth map,
intermediate-neuron selection, hidden-size selection or spreading, rescaling. The initializers differ only in
how they make the dense matrices, so the controls of an ablation differ from XPERT in exactly one thing.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from xpert_pl.bank.adapt import (
    DepthStrategy,
    RescaleMode,
    depth_map,
    rescale,
    select_hidden,
    select_neurons,
    split_neurons,
    spread_hidden,
    uniform_indices,
)
from xpert_pl.experts import MATRICES
from xpert_pl.initializers.base import Initializer, InitReport

PROJ = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
NeuronSelection = Literal["energy", "uniform"]
WiderFFN = Literal["scratch", "split"]


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


@dataclass(frozen=True)
class FFNTransfer:
    """How dense source matrices are fitted into a student's FFN layers: the adaptation options shared by every
    expert-based initializer (its `transfer` argument; e.g. `transfer: {rescale: none, depth_strategy: grouped}`).

    Frozen, so one instance can be a method's default argument.

    Attributes:
        rescale: Frobenius norm given to each transferred matrix: `expert_norm` (the mean norm of the experts it
            came from, applied to the whole source matrix before slicing), `target_init` (the norm of the
            student's fresh values it overwrites), or `none`.
        depth_strategy: student layer -> source layer: `uniform` stride (keeping the first and last layers),
            the `first` L_t layers, or `grouped` (one bank layer group per student layer, `xpert extract
            --group_layers`).
        neuron_selection: a narrower FFN keeps the highest-`energy` neurons or `uniform`ly spaced ones (Weight
            Selection); always the same indices in gate, up and down.
        wider_ffn: a wider FFN leaves the extra neurons at `scratch` init, or `split`s source neurons into
            copies sharing the down column (Net2WiderNet), so the FFN computes the source matrices' function.
        seed: seed of the random shares of `split`.
    """

    rescale: RescaleMode = "expert_norm"
    depth_strategy: DepthStrategy = "uniform"
    neuron_selection: NeuronSelection = "energy"
    wider_ffn: WiderFFN = "scratch"
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {
            "rescale": ("expert_norm", "target_init", "none"),
            "depth_strategy": ("uniform", "first", "grouped"),
            "neuron_selection": ("energy", "uniform"),
            "wider_ffn": ("scratch", "split"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got '{getattr(self, name)}'")

    @torch.no_grad()
    def apply(self, model: nn.Module, source: SourceFFN) -> tuple[list[str], dict[str, Any]]:
        """Overwrite the student's gate/up/down weights; returns the parameter names set and a report."""
        mlps = student_mlps(model)
        if self.rescale == "expert_norm" and source.expert_norms is None:
            raise ValueError("rescale='expert_norm' needs expert norms, which this initializer's source lacks")
        names = {id(p): n for n, p in model.named_parameters()}
        hidden_t, inter_t = mlps[0].gate_proj.weight.shape[1], mlps[0].gate_proj.weight.shape[0]
        hidden_src, hidden_dst = _hidden_indices(source.hidden_size, hidden_t)
        mapping = depth_map(len(source.source_layers), len(mlps), self.depth_strategy)
        generator = torch.Generator().manual_seed(self.seed)
        set_parameters, layer_reports = [], []
        for j, mlp in enumerate(mlps):
            layer = source.source_layers[mapping[j]]
            dense = self._rescaled(source, layer)
            rows, shares = self._neurons(dense, inter_t, generator)
            blocks = _blocks(dense, rows, shares, hidden_src)
            matrices = {
                m: self._write(getattr(mlp, PROJ[m]).weight, m, block, hidden_dst) for m, block in blocks.items()
            }
            set_parameters += [names[id(getattr(mlp, PROJ[m]).weight)] for m in MATRICES]
            layer_reports.append(
                {
                    "target_layer": j,
                    "source_layer": layer,
                    "neuron_selection": self._neuron_rule(source.intermediate_size, inter_t),
                    "neurons_set": len(rows),
                    "matrices": matrices,
                }
            )
        details = {
            "rescale": self.rescale,
            "depth_strategy": self.depth_strategy,
            "depth_map": [source.source_layers[i] for i in mapping],
            "source_shape": {"hidden": source.hidden_size, "intermediate": source.intermediate_size},
            "target_shape": {"hidden": hidden_t, "intermediate": inter_t, "layers": len(mlps)},
            "hidden_selection": _hidden_rule(source.hidden_size, hidden_t),
            "layers": layer_reports,
        }
        return set_parameters, details

    def _rescaled(self, source: SourceFFN, layer: int) -> dict[str, torch.Tensor]:
        dense = source.layers[layer]
        if self.rescale != "expert_norm":
            return dense
        return {m: rescale(dense[m], source.expert_norms[layer][m]) for m in MATRICES}

    def _neurons(self, dense: dict[str, torch.Tensor], target: int, generator: torch.Generator):
        """Source neuron per written target neuron, and each one's down-column multiplier (None: 1)."""
        size = dense["gate"].shape[0]
        if target >= size:
            if self.wider_ffn == "split":
                return split_neurons(size, target, generator)
            return torch.arange(size), None
        if self.neuron_selection == "uniform":
            return uniform_indices(size, target), None
        return select_neurons(dense["gate"], dense["up"], dense["down"], target), None

    def _write(self, weight: torch.Tensor, matrix: str, block: torch.Tensor, hidden_dst: torch.Tensor | None):
        """Copy `block` into the written region of `weight`; returns the matrix's norms for the report."""
        hidden = torch.arange(weight.shape[0 if matrix == "down" else 1]) if hidden_dst is None else hidden_dst
        neurons = torch.arange(block.shape[1] if matrix == "down" else block.shape[0])
        rows, cols = (hidden, neurons) if matrix == "down" else (neurons, hidden)
        region = (rows[:, None], cols[None, :])  # broadcast: the block's (rows x cols) cells of the weight
        before = float(torch.linalg.matrix_norm(weight.double()))
        if self.rescale == "target_init":
            block = rescale(block, float(torch.linalg.matrix_norm(weight[region].double())))
        weight[region] = block.to(dtype=weight.dtype, device=weight.device)
        return {
            "block_norm": float(torch.linalg.matrix_norm(block.double())),
            "norm_before": before,
            "norm_after": float(torch.linalg.matrix_norm(weight.double())),
        }

    def _neuron_rule(self, source_intermediate: int, target_intermediate: int) -> str:
        """The report's description of how intermediate neurons were chosen."""
        if target_intermediate < source_intermediate:
            return "top-energy" if self.neuron_selection == "energy" else "uniform"
        if target_intermediate == source_intermediate:
            return "all"
        if self.wider_ffn == "split":
            return f"all {source_intermediate}, split into {target_intermediate} (function-preserving)"
        return f"all {source_intermediate} into the first neurons; the rest keep scratch init"


def _hidden_indices(source: int, target: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(source hidden indices to read, student hidden positions to write); None means all of them."""
    if target == source:
        return None, None
    if target < source:
        return select_hidden(source, target), None
    return None, spread_hidden(source, target)


def _hidden_rule(source: int, target: int) -> str:
    if target == source:
        return "identity"
    if target < source:
        return "uniform element selection"
    return "spread: source dimensions at evenly spaced positions, the rest keep scratch init"


def _blocks(dense: dict[str, torch.Tensor], rows: torch.Tensor, shares: torch.Tensor | None, hidden):
    """The values to write: chosen neurons (rows of gate/up, columns of down) and chosen hidden dimensions."""
    gate, up, down = dense["gate"][rows], dense["up"][rows], dense["down"][:, rows]
    if shares is not None:
        down = down * shares
    if hidden is not None:
        gate, up, down = gate[:, hidden], up[:, hidden], down[hidden]
    return {"gate": gate, "up": up, "down": down}


class FFNTransferInit(Initializer):
    """An initializer that makes dense source-shaped FFN matrices and fits them into every student layer.

    Subclasses implement `source_ffn` and take a `transfer: FFNTransfer = <the method's default>` argument; the
    adaptation and the report are shared, so two methods differ only in where their matrices come from.
    """

    def __init__(self, transfer: FFNTransfer):
        if not isinstance(transfer, FFNTransfer):  # e.g. a dict from Python code; the CLI always builds one
            raise TypeError(f"transfer must be an FFNTransfer, got {type(transfer).__name__}")
        self.transfer = transfer

    @property
    def name(self) -> str:
        """The report's name of the method: the class name without `Init`, in snake case."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__.removesuffix("Init")).lower()

    @abc.abstractmethod
    def source_ffn(self, num_target_layers: int) -> SourceFFN:
        """The dense matrices to transfer (a method may build them for the student's depth)."""

    def initialize(self, model: PreTrainedModel) -> InitReport:
        """Overwrite every layer's gate/up/down weights; report the parameters, the mapping and the norms."""
        num_layers = len(student_mlps(model))  # an unsupported student fails before any source is read
        source = self.source_ffn(num_layers)
        set_parameters, details = self.transfer.apply(model, source)
        return InitReport(
            initializer=self.name, set_parameters=set_parameters, details={**source.description, **details}
        )
