"""Peer initialisation methods from the literature, applied to an MoE source's experts.

- `WeightSelectionInit`: Weight Selection (Xu et al., ICLR 2024): evenly spaced elements of a larger model's
  weights in every dimension and the first L_t layers; here of one expert or of the experts' average.
- `LinearExpansionInit`: learngene-style linear expansion (TLEG, Xia et al.): every FFN matrix of layer l of L is
  theta_l = theta_A + (l / L) theta_B, with theta_A, theta_B fitted by least squares to the source's layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch

from xpert_pl.adaptation import SourceFFN
from xpert_pl.analysis.selection import Selection
from xpert_pl.analysis.strategies import TopFrequencySelector
from xpert_pl.initializers.shared import (
    all_experts_choice,
    analysis_source,
    average_experts,
    load_analysis,
    selection_choice,
)
from xpert_pl.initializers.transfer import FFNTransfer, FFNTransferInit
from xpert_pl.layout import SELECTION_FILE, Artifact
from xpert_pl.sources.checkpoint import open_expert_source
from xpert_pl.sources.experts import MATRICES

ExpertChoice = Literal["average", "top"]


def layer_positions(num_layers: int) -> torch.Tensor:
    """Depth position l / L of layers l = 1..L (TLEG's expansion coefficient), as float64."""
    return torch.arange(1, num_layers + 1, dtype=torch.float64) / num_layers


def fit_linear_expansion(layers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares theta_A, theta_B with layers[i] ~ theta_A + t_i theta_B, t_i = (i + 1) / L (float64).

    One layer gives theta_B = 0 and theta_A = that layer.
    """
    stacked = torch.stack([x.double() for x in layers])
    t = layer_positions(len(layers)).reshape(-1, *([1] * (stacked.ndim - 1)))
    centred_t = t - t.mean()
    denom = float(centred_t.pow(2).sum())
    mean = stacked.mean(0)
    slope = (centred_t * (stacked - mean)).sum(0) / denom if denom > 0 else torch.zeros_like(mean)
    return mean - slope * t.mean(), slope


class WeightSelectionInit(FFNTransferInit):
    """Peer: Weight Selection from one expert or the expert average (evenly spaced neurons and hidden units)."""

    artifacts: ClassVar[dict[str, Artifact]] = {"source": Artifact.SOURCE}

    def __init__(
        self,
        source: str,
        expert: ExpertChoice = "average",
        analysis: str | None = None,
        transfer: FFNTransfer = FFNTransfer(rescale="none", depth_strategy="first", neuron_selection="uniform"),
        trust_remote_code: bool = False,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            expert: `average` (uniform mean of all routed experts of a layer) or `top` (the most frequently
                routed expert, which needs `analysis`).
            analysis: directory written by `xpert analyze`; only for `expert: top`.
            transfer: the adaptation to the student, as `XpertInit.transfer`; by default Weight Selection's rules:
                the `first` layers, `uniform`ly spaced neurons, values unscaled (`rescale: none`).
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
        """
        if expert not in ("average", "top"):
            raise ValueError(f"expert must be 'average' or 'top', got '{expert}'")
        if expert == "top" and analysis is None:
            raise ValueError("WeightSelectionInit(expert='top') needs `analysis` (the counts rank the experts)")
        super().__init__(transfer)
        self.source, self.expert, self.analysis = source, expert, analysis
        self.trust_remote_code = trust_remote_code

    def source_ffn(self, num_target_layers: int) -> SourceFFN:
        if self.expert == "top":
            counts, _ = load_analysis(self.analysis)
            source = analysis_source(self.analysis, self.source, self.trust_remote_code)
            choice = selection_choice(TopFrequencySelector(n=1).select(counts))
        else:
            source = open_expert_source(self.source, self.trust_remote_code)
            choice = all_experts_choice(source)
        ffn = average_experts(source, choice, progress=False)
        ffn.description = {"source": self.source, "expert": self.expert, **ffn.description}
        return ffn


class LinearExpansionInit(FFNTransferInit):
    """Peer: a linear expansion theta_A + (l / L) theta_B over depth, fitted to the source's per-layer FFNs."""

    artifacts: ClassVar[dict[str, Artifact]] = {"source": Artifact.SOURCE}

    def __init__(
        self,
        source: str,
        analysis: str | None = None,
        transfer: FFNTransfer = FFNTransfer(rescale="none", depth_strategy="first"),
        trust_remote_code: bool = False,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            analysis: directory written by `xpert analyze`: each source layer is then represented by XPERT's
                selected experts (weighted average); None: by the uniform average of all its routed experts.
            transfer: the adaptation to the student, as `XpertInit.transfer` (`rescale: none` by default); no
                `rescale: expert_norm` (the fitted matrices are not averages of experts), and any depth strategy
                is the identity (the expansion has one matrix per student layer).
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
        """
        if transfer.rescale == "expert_norm":
            raise ValueError(
                "LinearExpansionInit cannot rescale to expert norms; use transfer.rescale 'none' or 'target_init'"
            )
        super().__init__(transfer)
        self.source, self.analysis, self.trust_remote_code = source, analysis, trust_remote_code

    def source_ffn(self, num_target_layers: int) -> SourceFFN:
        if self.analysis is None:
            source = open_expert_source(self.source, self.trust_remote_code)
            choice = all_experts_choice(source)
        else:
            selection = Selection.load(Path(self.analysis) / SELECTION_FILE)
            source = analysis_source(self.analysis, self.source, self.trust_remote_code)
            choice = selection_choice(selection)
        per_layer = average_experts(source, choice, progress=False)
        fitted = {m: fit_linear_expansion([per_layer.layers[i][m] for i in per_layer.source_layers]) for m in MATRICES}
        positions = layer_positions(num_target_layers)
        layers = {
            j: {m: (a + float(positions[j]) * b).float() for m, (a, b) in fitted.items()}
            for j in range(num_target_layers)
        }
        description = {"source": self.source, "fitted_to_layers": per_layer.source_layers, **per_layer.description}
        return SourceFFN(layers=layers, expert_norms=None, description=description)
