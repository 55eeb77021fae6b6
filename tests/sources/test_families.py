"""Family records and `moe_layers` / `expert_matrix` on live models of every supported family."""

from __future__ import annotations

import pytest
import torch
from tiny_families import FAMILY_NAMES, FAMILY_SPECS
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, OlmoeConfig, OlmoeForCausalLM

from xpert_pl.sources.experts import SUPPORTED_FAMILIES, UnsupportedModelError, expert_matrix, moe_layers, stack_experts
from xpert_pl.sources.families import FAMILIES, family_of

FAMILY_LIST = ("olmoe", "mixtral", "qwen2_moe", "deepseek_v2", "deepseek_v3")


def test_the_first_five_families_come_first_and_every_record_is_keyed_by_its_name():
    assert SUPPORTED_FAMILIES[:5] == FAMILY_LIST and tuple(FAMILIES) == SUPPORTED_FAMILIES
    assert all(family.name == name for name, family in FAMILIES.items())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_moe_layers_reports_layers_routing_and_shared_experts(saved_families, family):
    model, _ = saved_families[family]
    expected = FAMILY_SPECS[family][3]
    layers = moe_layers(model)
    assert [layer.index for layer in layers] == expected.layers  # dense layers are absent, indices are real
    for layer in layers:
        block = model.model.layers[layer.index].mlp
        assert layer.router is block.gate and layer.experts is block.experts
        assert (layer.num_experts, layer.top_k, layer.scoring) == (
            expected.num_experts,
            expected.top_k,
            expected.scoring,
        )
        shared = [] if expected.shared is None else [f"model.layers.{layer.index}.mlp.{expected.shared}"]
        assert layer.shared == shared


def test_fused_expert_matrix_splits_gate_then_up():
    config = OlmoeConfig(
        vocab_size=64, hidden_size=8, intermediate_size=4, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_experts=3, num_experts_per_tok=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = OlmoeForCausalLM(config)
    experts = moe_layers(model)[0].experts
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8))
    gate_up = experts.gate_up_proj[2].detach()
    assert torch.equal(expert_matrix(experts, 2, "gate"), gate_up[:4])
    assert torch.equal(expert_matrix(experts, 2, "up"), gate_up[4:])
    assert torch.equal(expert_matrix(experts, 1, "down"), experts.down_proj[1].detach())
    assert stack_experts(experts, [2, 0], "down").shape == (8, 4, 2)


class _Linear(nn.Module):
    def __init__(self, rows: int, cols: int, seed: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("names", [("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2")])
def test_per_expert_module_lists_of_transformers_4(names):
    """transformers-4 experts: a ModuleList of per-expert MLPs (Mixtral's with w1 / w3 / w2)."""
    experts = nn.ModuleList()
    for e in range(3):
        mlp = nn.Module()
        for i, (name, shape) in enumerate(zip(names, [(4, 8), (4, 8), (8, 4)], strict=True)):
            setattr(mlp, name, _Linear(*shape, seed=10 * e + i))
        experts.append(mlp)
    for e in range(3):
        for matrix, name in zip(("gate", "up", "down"), names, strict=True):
            assert torch.equal(expert_matrix(experts, e, matrix), getattr(experts[e], name).weight.detach())
    with pytest.raises(IndexError, match="out of range"):
        expert_matrix(experts, -1, "gate")
    with pytest.raises(ValueError, match="matrix must be"):
        expert_matrix(experts, 0, "value")


def test_unknown_model_names_every_supported_family():
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(UnsupportedModelError) as info:
        moe_layers(llama)
    message = str(info.value)
    assert "\n" not in message and "llama" in message
    assert all(name in message for name in FAMILY_LIST)


def test_known_family_without_experts_is_rejected():
    with pytest.raises(UnsupportedModelError, match=r"no routed experts.*deepseek_v3"):
        family_of({"model_type": "qwen2_moe", "num_experts": 0, "num_experts_per_tok": 2})


def test_layer_rules_of_qwen2_moe_and_deepseek():
    qwen = {
        "model_type": "qwen2_moe",
        "num_experts": 4,
        "num_hidden_layers": 6,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [3],
    }
    assert family_of(qwen).moe_layer_indices(qwen) == [1, 5]
    # DeepSeek's reference code counts moe_layer_freq from layer 0, after the first_k_dense_replace dense layers.
    deepseek = {
        "model_type": "deepseek_v2",
        "n_routed_experts": 4,
        "num_hidden_layers": 7,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 2,
    }
    assert family_of(deepseek).moe_layer_indices(deepseek) == [2, 4, 6]
    every = {**deepseek, "moe_layer_freq": 1}
    assert family_of(every).moe_layer_indices(every) == [1, 2, 3, 4, 5, 6]


def test_scoring_follows_the_config_when_it_names_one():
    v2 = FAMILIES["deepseek_v2"]
    assert v2.scoring_of({"n_routed_experts": 4}) == "softmax"
    assert v2.scoring_of({"n_routed_experts": 4, "scoring_func": "sigmoid"}) == "sigmoid"
    assert FAMILIES["deepseek_v3"].scoring_of({}) == "sigmoid"


def test_a_dense_block_where_the_config_expects_experts_is_an_error(saved_families):
    model, _ = saved_families["deepseek_v3"]
    dense_mlp = model.model.layers[0].mlp
    original = model.model.layers[2].mlp
    model.model.layers[2].mlp = dense_mlp
    try:
        with pytest.raises(UnsupportedModelError, match="layer 2"):
            moe_layers(model)
    finally:
        model.model.layers[2].mlp = original
