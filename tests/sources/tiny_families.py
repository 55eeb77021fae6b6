"""Tiny random-weight MoEs of every supported family and how to write them as Hugging Face checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

COMMON = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_DEEPSEEK = dict(
    intermediate_size=48,
    moe_intermediate_size=16,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
    n_group=2,
    topk_group=1,
    kv_lora_rank=8,
    q_lora_rank=None,
    qk_rope_head_dim=4,
    v_head_dim=8,
    qk_nope_head_dim=4,
)


@dataclass(frozen=True)
class Expected:
    """What `moe_layers` should report for a family's tiny model."""

    layers: list[int]
    num_experts: int
    top_k: int
    scoring: str
    shared: str | None  # attribute name of the shared expert in the MoE block


# Qwen2-MoE's layer 1 is made dense through `mlp_only_layers`, DeepSeek's layer 0 through `first_k_dense_replace`.
FAMILY_SPECS: dict[str, tuple[type, type, dict, Expected]] = {
    "olmoe": (
        OlmoeConfig,
        OlmoeForCausalLM,
        dict(intermediate_size=16, num_experts=4, num_experts_per_tok=2),
        Expected([0, 1, 2], 4, 2, "softmax", None),
    ),
    "mixtral": (
        MixtralConfig,
        MixtralForCausalLM,
        dict(intermediate_size=16, num_local_experts=4, num_experts_per_tok=2),
        Expected([0, 1, 2], 4, 2, "softmax", None),
    ),
    "qwen2_moe": (
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
        dict(
            intermediate_size=48,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=24,
            num_experts=6,
            num_experts_per_tok=3,
            mlp_only_layers=[1],
        ),
        Expected([0, 2], 6, 3, "softmax", "shared_expert"),
    ),
    "deepseek_v2": (
        DeepseekV2Config,
        DeepseekV2ForCausalLM,
        _DEEPSEEK,
        Expected([1, 2], 8, 2, "softmax", "shared_experts"),
    ),
    "deepseek_v3": (
        DeepseekV3Config,
        DeepseekV3ForCausalLM,
        _DEEPSEEK,
        Expected([1, 2], 8, 2, "sigmoid", "shared_experts"),
    ),
}
FAMILY_NAMES = list(FAMILY_SPECS)


def build_model(family: str, seed: int = 0) -> nn.Module:
    """A tiny model of `family` whose every parameter is freshly random, so no two expert matrices coincide."""
    config_cls, model_cls, overrides, _ = FAMILY_SPECS[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**COMMON, **overrides)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.5)
    return model


def write_fused_checkpoint(model: nn.Module, directory: Path, rename: dict[str, str] | None = None) -> Path:
    """Save `model` by hand in the in-memory (fused) layout: one `model.safetensors` with `experts.gate_up_proj`
    / `experts.down_proj` keys, plus its config.json; `rename` replaces key substrings (old -> new)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, tensor in model.state_dict().items():
        for old, new in (rename or {}).items():
            key = key.replace(old, new)
        tensors[key] = tensor.contiguous()
    tensors.pop("lm_head.weight", None)  # tied or not, it plays no part here
    save_file(tensors, str(directory / "model.safetensors"))
    model.config.to_json_file(str(directory / "config.json"))
    return directory


# Every other supported family is built from its transformers config class with these sizes (fields it lacks are
# left out). One expert group and zeroed router biases make the router's choice a plain top-k of its scores.
GENERIC_SIZES = dict(
    COMMON,
    intermediate_size=48,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
    head_dim=16,
    num_experts=8,
    num_local_experts=8,
    n_routed_experts=8,
    moe_num_experts=8,
    num_experts_per_tok=2,
    num_experts_per_token=2,
    moe_k=2,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    num_expert_group=1,
    kv_lora_rank=8,
    q_lora_rank=16,
    qk_rope_head_dim=4,
    v_head_dim=8,
    qk_nope_head_dim=4,
    first_k_dense_replace=1,
)


def build_generic(model_type: str, seed: int = 0) -> nn.Module:
    """A tiny random model of any supported family from its registered config class (3 layers, 8 experts, top-2)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_cls = CONFIG_MAPPING[model_type]
    defaults = config_cls().to_dict()
    fields = {k: v for k, v in GENERIC_SIZES.items() if k in defaults}
    for key in ("layer_types", "mlp_layer_types"):  # per-layer lists must match the layer count
        if isinstance(defaults.get(key), list):
            fields[key] = defaults[key][: COMMON["num_hidden_layers"]]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_cls(**fields)).eval()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if "bias" in name and any(part in name for part in ("gate", "router", "expert", "correction")):
                tensor.zero_()
            elif tensor.is_floating_point() and not name.endswith("inv_freq"):
                tensor.normal_(0, 0.5)
    return model
