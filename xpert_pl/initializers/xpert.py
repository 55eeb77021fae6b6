"""XPERT initialisation: a dense student's FFN matrices from a knowledge bank (DESIGN.md sections 4-5)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from xpert_pl.bank.adapt import collapse, depth_map, rescale, select_hidden, select_neurons
from xpert_pl.bank.store import KnowledgeBank
from xpert_pl.experts import MATRICES
from xpert_pl.initializers.base import Initializer, InitReport

PROJ = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


class UnsupportedStudentError(ValueError):
    """The student has no `model.layers[j].mlp.{gate,up,down}_proj` SwiGLU layout."""


def student_mlps(model: nn.Module) -> list[nn.Module]:
    """The SwiGLU MLP module of every decoder layer; raises UnsupportedStudentError if the layout differs."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise UnsupportedStudentError(
            f"{type(model).__name__} has no `model.layers`: XpertInit needs a Llama-style decoder"
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


class XpertInit(Initializer):
    """Initialises every FFN matrix of a dense SwiGLU student from a knowledge bank; nothing else is touched."""

    def __init__(
        self,
        bank: str,
        collapse: Literal["frequency", "uniform"] = "frequency",
        rescale: Literal["expert_norm", "target_init", "none"] = "expert_norm",
        depth_strategy: Literal["uniform", "first"] = "uniform",
    ):
        """
        Args:
            bank: directory of a knowledge bank (`bank.safetensors` + `manifest.json`) written by the extract step.
            collapse: expert weights used to collapse the Tucker factors: `frequency` (the bank's routing-frequency
                weights) or `uniform` (1/n).
            rescale: Frobenius norm given to each transferred matrix: `expert_norm` (mean norm of the selected
                experts), `target_init` (norm of the student's freshly initialised values it overwrites), `none`.
            depth_strategy: student layer -> source layer: `uniform` (stride keeping first and last) or `first`.
        """
        if collapse not in ("frequency", "uniform"):
            raise ValueError(f"collapse must be 'frequency' or 'uniform', got '{collapse}'")
        if rescale not in ("expert_norm", "target_init", "none"):
            raise ValueError(f"rescale must be 'expert_norm', 'target_init' or 'none', got '{rescale}'")
        if depth_strategy not in ("uniform", "first"):
            raise ValueError(f"depth_strategy must be 'uniform' or 'first', got '{depth_strategy}'")
        self.bank = bank
        self.collapse = collapse
        self.rescale = rescale
        self.depth_strategy = depth_strategy
        self._bank: KnowledgeBank | None = None

    def load_bank(self) -> KnowledgeBank:
        """The bank, loaded (and validated) on first use."""
        if self._bank is None:
            self._bank = KnowledgeBank.load(self.bank)
        return self._bank

    def collapsed(self, bank: KnowledgeBank, layer: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Source-shaped dense gate/up/down of a source layer (rescaled for expert_norm), and their raw norms."""
        n = len(bank.experts[layer])
        weights = bank.weights[layer] if self.collapse == "frequency" else torch.full((n,), 1.0 / n)
        out, raw_norms = {}, {}
        for m in MATRICES:
            entry = bank.entry(layer, m)
            w = collapse(entry.core, entry.factors.factors, weights)
            raw_norms[m] = float(torch.linalg.matrix_norm(w.double()))
            # The whole source matrix is brought to the experts' scale before any slicing (section 4).
            out[m] = rescale(w, entry.expert_norm) if self.rescale == "expert_norm" else w
        return out, raw_norms

    def initialize(self, model: PreTrainedModel) -> InitReport:
        """Overwrite every layer's gate/up/down weights from the bank; report parameters, mapping and norms."""
        mlps = student_mlps(model)
        bank = self.load_bank()
        names = {id(p): n for n, p in model.named_parameters()}
        hidden_s, inter_s = bank.hidden_size, bank.intermediate_size
        hidden_t, inter_t = mlps[0].gate_proj.weight.shape[1], mlps[0].gate_proj.weight.shape[0]
        hidden_idx = select_hidden(hidden_s, hidden_t)  # raises for a wider student
        mapping = depth_map(len(bank.source_layers), len(mlps), self.depth_strategy)
        set_parameters, layer_reports = [], []
        for j, mlp in enumerate(mlps):
            source = bank.source_layers[mapping[j]]
            dense, raw_norms = self.collapsed(bank, source)
            neurons = select_neurons(dense["gate"], dense["up"], dense["down"], inter_t)
            norms = self._copy_into(mlp, dense, neurons, hidden_idx)
            for m in MATRICES:
                norms[m]["collapsed_raw_norm"] = raw_norms[m]
            set_parameters += [names[id(getattr(mlp, PROJ[m]).weight)] for m in MATRICES]
            layer_reports.append(
                {
                    "target_layer": j,
                    "source_layer": source,
                    "neuron_selection": _neuron_rule(inter_s, inter_t),
                    "neurons_set": len(neurons),
                    "matrices": norms,
                }
            )
        details = {
            "bank": str(self.bank),
            "collapse": self.collapse,
            "rescale": self.rescale,
            "depth_strategy": self.depth_strategy,
            "depth_map": [bank.source_layers[i] for i in mapping],
            "source_shape": {"hidden": hidden_s, "intermediate": inter_s},
            "target_shape": {"hidden": hidden_t, "intermediate": inter_t, "layers": len(mlps)},
            "hidden_selection": "identity" if hidden_t == hidden_s else "uniform element selection",
            "layers": layer_reports,
        }
        return InitReport(initializer="xpert", set_parameters=set_parameters, details=details)

    @torch.no_grad()
    def _copy_into(
        self, mlp: nn.Module, dense: dict[str, torch.Tensor], neurons: torch.Tensor, hidden: torch.Tensor
    ) -> dict[str, Any]:
        """Copy the selected block of each dense matrix into the student's weight; returns per-matrix norms."""
        k = len(neurons)
        blocks = {
            "gate": dense["gate"][neurons][:, hidden],
            "up": dense["up"][neurons][:, hidden],
            "down": dense["down"][hidden][:, neurons],
        }
        norms = {}
        for m, block in blocks.items():
            weight = getattr(mlp, PROJ[m]).weight
            # Neurons beyond the source's I_s (wider student) are outside the block and keep scratch init.
            view = weight[:k, :] if m != "down" else weight[:, :k]
            before = float(torch.linalg.matrix_norm(weight.detach().double()))
            if self.rescale == "target_init":
                block = rescale(block, float(torch.linalg.matrix_norm(view.detach().double())))
            view.copy_(block.to(dtype=weight.dtype, device=weight.device))
            norms[m] = {
                "collapsed_norm": float(torch.linalg.matrix_norm(dense[m].double())),
                "block_norm": float(torch.linalg.matrix_norm(block.double())),
                "norm_before": before,
                "norm_after": float(torch.linalg.matrix_norm(weight.detach().double())),
            }
        return norms


def _neuron_rule(source_intermediate: int, target_intermediate: int) -> str:
    """The report's description of how intermediate neurons were chosen."""
    if target_intermediate < source_intermediate:
        return "top-energy"
    if target_intermediate == source_intermediate:
        return "all"
    return f"all {source_intermediate} into the first neurons; the rest keep scratch init"
