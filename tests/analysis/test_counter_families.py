"""Routing counts across router kinds: the router's own (grouped) top-k, logits-only routers, padding, bf16."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

from xpert_pl.analysis import ExpertActivationCounter, count_activations
from xpert_pl.analysis.counter import compute_dtype, precision_context
from xpert_pl.sources.experts import moe_layers

VOCAB = 64


@pytest.fixture
def tiny_deepseek() -> nn.Module:
    """A DeepSeek-V3-style model: 16 experts in 4 groups, 2 groups kept, top-4, sigmoid scoring, a dense layer 0.

    The score-correction biases are random, so the router's choice differs from a plain top-k of the scores.
    """
    torch.manual_seed(0)
    config = DeepseekV3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_shared_experts=1,
        n_routed_experts=16,
        n_group=4,
        topk_group=2,
        num_experts_per_tok=4,
        first_k_dense_replace=1,
        kv_lora_rank=8,
        q_lora_rank=None,
        qk_rope_head_dim=4,
        v_head_dim=8,
        qk_nope_head_dim=4,
        max_position_embeddings=64,
    )
    model = DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():
        for block in model.model.layers[1:]:
            block.mlp.gate.weight.normal_(0, 0.5)
            block.mlp.gate.e_score_correction_bias.uniform_(-0.3, 0.3)
    return model


def _deepseek_layers(model: nn.Module) -> list[SimpleNamespace]:
    """The routed blocks (layer 0 is dense), described as `moe_layers` describes a sigmoid-scored family."""
    cfg = model.config
    return [
        SimpleNamespace(
            router=block.mlp.gate, num_experts=cfg.n_routed_experts, top_k=cfg.num_experts_per_tok, scoring="sigmoid"
        )
        for block in model.model.layers[cfg.first_k_dense_replace :]
    ]


def _grouped_top_k(hidden: torch.Tensor, router: nn.Module, cfg: DeepseekV3Config) -> torch.Tensor:
    """DeepSeek-V3's rule, written out: top groups by the sum of their 2 best biased scores, then top-k inside."""
    scores = torch.sigmoid(hidden.float() @ router.weight.detach().float().T) + router.e_score_correction_bias
    grouped = scores.view(-1, cfg.n_group, cfg.n_routed_experts // cfg.n_group)
    keep = grouped.topk(2, dim=-1).values.sum(-1).topk(cfg.topk_group, dim=-1).indices
    allowed = torch.zeros(grouped.shape[:2], dtype=torch.bool).scatter_(1, keep, True)
    masked = grouped.masked_fill(~allowed.unsqueeze(-1), float("-inf")).reshape(scores.shape)
    return masked.topk(cfg.num_experts_per_tok, dim=-1).indices


def _bincount(indices: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(indices.reshape(-1), minlength=n)


def test_deepseek_grouped_counts_match_the_rule_and_ignore_padding(tiny_deepseek):
    model, cfg = tiny_deepseek, tiny_deepseek.config
    layers = _deepseek_layers(model)
    captured: dict[int, torch.Tensor] = {}
    handles = [
        layer.router.register_forward_pre_hook(lambda mod, args, i=i: captured.__setitem__(i, args[0].detach()))
        for i, layer in enumerate(layers)
    ]
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    try:
        with ExpertActivationCounter(model, ["d"], layers=layers) as counter, torch.inference_mode():
            counter.set_attention_mask(mask)
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    result = counter.result()
    keep = mask.reshape(-1).bool()
    assert result.tokens.tolist() == [int(mask.sum())]
    naive_differs = False
    for i, layer in enumerate(layers):
        hidden = captured[i].reshape(-1, cfg.hidden_size)[keep]
        expected = _bincount(_grouped_top_k(hidden, layer.router, cfg), cfg.n_routed_experts)
        assert torch.equal(result.counts[i, 0], expected), f"layer {i}"
        scores = torch.sigmoid(hidden.float() @ layer.router.weight.detach().float().T)
        torch.testing.assert_close(result.prob_sum[i, 0], scores.double().sum(0))
        naive = _bincount(scores.topk(cfg.num_experts_per_tok, dim=-1).indices, cfg.n_routed_experts)
        naive_differs |= not torch.equal(naive, expected)
    assert naive_differs, "the fixture should make grouped routing differ from a plain top-k"


def test_olmoe_uses_the_routers_own_choice(tiny_moe, make_batches):
    """OLMoE's router returns (logits, weights, indices): counts are the histogram of those indices."""
    seen: dict[int, list[torch.Tensor]] = {}
    layers = moe_layers(tiny_moe)
    handles = [
        layer.router.register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, []).append(out[2].detach()))
        for i, layer in enumerate(layers)
    ]
    try:
        counts = count_activations(tiny_moe, {"d": make_batches(2, 3, 8, seed=4)}, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    for i in range(len(layers)):
        assert torch.equal(counts.counts[i, 0], _bincount(torch.cat(seen[i]), 8)), f"layer {i}"


def test_logits_only_router_is_routed_by_top_k_of_probabilities():
    """A transformers-4 router (an nn.Linear returning logits): the counter computes softmax -> top-k itself."""
    torch.manual_seed(0)
    routers = [nn.Linear(8, 6, bias=False), nn.Linear(8, 6, bias=False)]
    layers = [SimpleNamespace(router=r, num_experts=6, top_k=2) for r in routers]
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    with ExpertActivationCounter(nn.Module(), ["d"], layers=layers) as counter, torch.no_grad():
        counter.set_attention_mask(mask)
        logits = [r(x).reshape(-1, 6) for r in routers]
    result = counter.result()
    keep = mask.reshape(-1).bool()
    for i, lg in enumerate(logits):
        probs = torch.softmax(lg[keep], dim=-1)
        assert torch.equal(result.counts[i, 0], _bincount(probs.topk(2, dim=-1).indices, 6))
        torch.testing.assert_close(result.prob_sum[i, 0], probs.double().sum(0))
    assert result.tokens.tolist() == [7]


def test_unknown_scoring_is_rejected():
    layer = SimpleNamespace(router=nn.Linear(4, 4), num_experts=4, top_k=1, scoring="sparsemax")
    with pytest.raises(ValueError, match="sparsemax"):
        ExpertActivationCounter(nn.Module(), ["d"], layers=[layer])


def test_bfloat16_forced_on_cpu(tiny_moe, make_batches):
    dtypes = []
    handle = moe_layers(tiny_moe)[0].router.register_forward_hook(lambda m, a, out: dtypes.append(out[0].dtype))
    try:
        counts = count_activations(
            tiny_moe,
            {"a": make_batches(2, 2, 12), "b": make_batches(1, 3, 5, seed=1)},
            progress=False,
            precision="bfloat16",
        )
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the forward really ran in bf16
    assert counts.counts.dtype == torch.int64 and counts.prob_sum.dtype == torch.float64
    assert counts.tokens.tolist() == [48, 15]
    assert torch.equal(counts.counts.sum(-1), (counts.tokens * counts.top_k).expand(4, 2))
    torch.testing.assert_close(counts.prob_sum.sum(-1), counts.tokens.double().expand(4, 2), rtol=1e-5, atol=1e-4)
    assert next(tiny_moe.parameters()).dtype == torch.float32  # autocast, the weights are untouched


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert compute_dtype("auto", cpu) == torch.float32
    assert compute_dtype("auto", cpu, torch.bfloat16) == torch.bfloat16  # a bf16 model runs as loaded
    assert compute_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be"):
        compute_dtype("fp8", cpu)
    bf16_model = nn.Linear(2, 2).to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32"):
        precision_context(bf16_model, "float32")
