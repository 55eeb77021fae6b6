"""Where a source MoE keeps its routers and experts, and how to read expert FFN matrices out of it.

Matrix orientation follows `nn.Linear.weight`: gate and up are (I x H), down is (H x I), for intermediate size I
and hidden size H. Two storage layouts are understood: the fused 3-D `gate_up_proj` (E x 2I x H) / `down_proj`
(E x H x I) parameters of transformers 5, and per-expert modules `experts.{e}.gate_proj/up_proj/down_proj`
(Mixtral: `w1/w3/w2`) as in transformers 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MATRICES = ("gate", "up", "down")
SUPPORTED_FAMILIES = ("olmoe",)


class UnsupportedModelError(ValueError):
    """The model is not a Mixture-of-Experts of a supported family."""


@dataclass
class MoELayer:
    """One MoE block: its router module, its experts, and routing settings."""

    index: int
    router: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """The MoE blocks of a Hugging Face causal LM, in depth order."""
    config = model.config
    if getattr(config, "model_type", None) not in SUPPORTED_FAMILIES or not getattr(config, "num_experts", 0):
        raise UnsupportedModelError(
            f"model type '{getattr(config, 'model_type', '?')}' is not a supported MoE; "
            f"supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )
    layers = []
    for index, block in enumerate(model.model.layers):
        mlp = block.mlp
        layers.append(MoELayer(index, mlp.gate, mlp.experts, config.num_experts, config.num_experts_per_tok))
    return layers


def expert_matrix(experts: nn.Module, expert: int, matrix: str) -> torch.Tensor:
    """One expert's `matrix` ('gate', 'up' or 'down') as a detached float32 tensor, in nn.Linear orientation."""
    if matrix not in MATRICES:
        raise ValueError(f"matrix must be one of {MATRICES}, got '{matrix}'")
    if hasattr(experts, "gate_up_proj"):  # fused transformers-5 layout
        if matrix == "down":
            weight = experts.down_proj[expert]
        else:
            gate, up = experts.gate_up_proj[expert].chunk(2, dim=0)
            weight = gate if matrix == "gate" else up
    else:  # per-expert modules
        module = experts[expert]
        names = {"gate": ("gate_proj", "w1"), "up": ("up_proj", "w3"), "down": ("down_proj", "w2")}[matrix]
        weight = next(getattr(module, n).weight for n in names if hasattr(module, n))
    return weight.detach().float().cpu()


def stack_experts(experts: nn.Module, expert_ids: list[int], matrix: str) -> torch.Tensor:
    """The selected experts' `matrix` stacked on a last mode: a (d1 x d2 x n) tensor."""
    return torch.stack([expert_matrix(experts, e, matrix) for e in expert_ids], dim=-1)
