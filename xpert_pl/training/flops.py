"""Per-token compute of a model, by the usual 2N (forward) / 6N (forward + backward) rule on active parameters.

N counts every parameter a token passes through: for a Mixture-of-Experts only top_k / E of each layer's routed
experts (routers, attention, norms, embeddings and shared experts always count). The sequence-length term of
attention is left out, as in the 6N rule, so the counts compare methods at equal tokens, not wall time.
"""

from __future__ import annotations

from torch import nn

from xpert_pl.model_card import count_parameters
from xpert_pl.sources.experts import UnsupportedModelError, moe_layers


def active_parameters(model: nn.Module) -> int:
    """Parameters used per token: all of a dense model; an MoE's routed experts only at top_k / E."""
    total = count_parameters(model)
    try:
        layers = moe_layers(model)
    except UnsupportedModelError:  # a dense model (or a family the kit does not read): everything is active
        return total
    inactive = 0
    for layer in layers:
        routed = sum(p.numel() for p in layer.experts.parameters())
        # Experts of a layer have equal size, so routed * top_k / E is exact in integers.
        inactive += routed - routed * layer.top_k // layer.num_experts
    return total - inactive


def forward_flops_per_token(model: nn.Module) -> int:
    """FLOPs of one forward pass per token: 2 x active parameters."""
    return 2 * active_parameters(model)


def training_flops_per_token(model: nn.Module) -> int:
    """FLOPs of one training step (forward + backward) per token: 6 x active parameters."""
    return 6 * active_parameters(model)
