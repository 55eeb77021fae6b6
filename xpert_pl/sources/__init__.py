"""Reading MoE source checkpoints: the supported families and their key layouts (`families`), experts of a live
model (`experts`), experts read by key from safetensors files (`checkpoint`), and one reading interface over
both (`reader`). `open_expert_source` is the one way the kit opens a source model.
"""

from xpert_pl.sources.checkpoint import CheckpointError, CheckpointExperts, has_safetensors_weights, open_expert_source
from xpert_pl.sources.experts import MoELayer, expert_matrix, moe_layers, stack_experts
from xpert_pl.sources.families import (
    FAMILIES,
    MATRICES,
    SUPPORTED_FAMILIES,
    Family,
    UnsupportedModelError,
    config_dict,
    family_of,
)
from xpert_pl.sources.reader import ExpertReader, expert_reader

__all__ = [
    "FAMILIES",
    "MATRICES",
    "SUPPORTED_FAMILIES",
    "CheckpointError",
    "CheckpointExperts",
    "ExpertReader",
    "Family",
    "MoELayer",
    "UnsupportedModelError",
    "config_dict",
    "expert_matrix",
    "expert_reader",
    "family_of",
    "has_safetensors_weights",
    "moe_layers",
    "open_expert_source",
    "stack_experts",
]
