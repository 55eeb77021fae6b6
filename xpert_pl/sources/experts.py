"""Where a live source MoE keeps its routers and experts, and how to read expert FFN matrices out of it.

The families understood and where each keeps its modules are described in `xpert_pl.sources.families`.
Matrix orientation follows `nn.Linear.weight`: gate and up are (I x H), down is (H x I), for intermediate size I
and hidden size H. Two storage layouts are understood: the fused 3-D `gate_up_proj` (E x 2I x H) / `down_proj`
(E x H x I) parameters of transformers 5, and per-expert modules `experts.{e}.gate_proj/up_proj/down_proj`
(Mixtral: `w1/w3/w2`) as in transformers 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from xpert_pl.sources.families import MATRICES, SUPPORTED_FAMILIES, UnsupportedModelError, config_dict, family_of

__all__ = [
    "MATRICES",
    "SUPPORTED_FAMILIES",
    "MoELayer",
    "UnsupportedModelError",
    "expert_matrix",
    "moe_layers",
    "stack_experts",
]

# Per-expert module names of each matrix: transformers' names first, then Mixtral's original ones.
_MODULE_NAMES = {"gate": ("gate_proj", "w1"), "up": ("up_proj", "w3"), "down": ("down_proj", "w2")}


@dataclass
class MoELayer:
    """One MoE block: its router module, its routed experts, routing settings and its shared experts.

    Attributes:
        index: the decoder layer index in the model (dense layers have no `MoELayer`, so indices may skip).
        router: the router module (its forward returns logits, or `(logits, weights, indices)`).
        experts: the routed experts (fused parameters or a per-expert ModuleList).
        num_experts: routed experts in the layer.
        top_k: experts routed per token.
        scoring: how the router turns logits into probabilities: `softmax` or `sigmoid`.
        shared: qualified module names of the always-on shared experts; reported, never selectable.
    """

    index: int
    router: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int
    scoring: str = "softmax"
    shared: list[str] = field(default_factory=list)


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """The MoE blocks of a Hugging Face causal LM of a supported family, in depth order.

    Raises:
        UnsupportedModelError: the model is not a supported MoE, or a layer its config calls MoE has no MoE block.
    """
    config = config_dict(model.config)
    family = family_of(config)
    decoder = model.model.layers
    num_experts, top_k, scoring = family.num_experts(config), family.top_k(config), family.scoring_of(config)
    layers = []

    def has_experts(index: int) -> bool:
        return any(hasattr(getattr(decoder[index], n, None), family.experts) for n in family.blocks)

    for index in family.moe_layer_indices(config, len(decoder), has_experts):
        name = next((n for n in family.blocks if hasattr(decoder[index], n)), None)
        block = getattr(decoder[index], name) if name else None
        if block is None or not hasattr(block, family.experts):
            raise UnsupportedModelError(
                f"layer {index} of this {family.name} model has no MoE block ({' or '.join(family.blocks)} with "
                f"'{family.experts}') although its config makes it an MoE layer"
            )
        shared = [f"model.layers.{index}.{name}.{s}" for s in family.shared if getattr(block, s, None) is not None]
        router, experts = getattr(block, family.router), getattr(block, family.experts)
        layers.append(MoELayer(index, router, experts, num_experts, top_k, scoring, shared))
    return layers


def expert_matrix(experts: nn.Module, expert: int, matrix: str) -> torch.Tensor:
    """One expert's `matrix` ('gate', 'up' or 'down') as a detached float32 tensor, in nn.Linear orientation."""
    if matrix not in MATRICES:
        raise ValueError(f"matrix must be one of {MATRICES}, got '{matrix}'")
    fused = hasattr(experts, "gate_up_proj")
    count = experts.gate_up_proj.shape[0] if fused else len(experts)
    # A negative index would silently pick an expert from the end.
    if not 0 <= expert < count:
        raise IndexError(f"expert {expert} out of range: the layer has {count} experts")
    if fused:  # transformers 5: gate rows first, then up rows
        if matrix == "down":
            weight = experts.down_proj[expert]
        else:
            gate, up = experts.gate_up_proj[expert].chunk(2, dim=0)
            weight = gate if matrix == "gate" else up
    else:  # transformers 4: one module per expert
        module = experts[expert]
        name = next((n for n in _MODULE_NAMES[matrix] if hasattr(module, n)), None)
        if name is None:
            raise UnsupportedModelError(f"expert module {type(module).__name__} has none of {_MODULE_NAMES[matrix]}")
        weight = getattr(module, name).weight
    return weight.detach().float().cpu()


def stack_experts(experts: nn.Module, expert_ids: list[int], matrix: str) -> torch.Tensor:
    """The selected experts' `matrix` stacked on a last mode: a (d1 x d2 x n) tensor."""
    return torch.stack([expert_matrix(experts, e, matrix) for e in expert_ids], dim=-1)
