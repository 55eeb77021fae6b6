"""Routing counts: totals, an independent recomputation, padding, token budget, unsupported models."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from xpert_pl.analysis import ActivationCounts, ExpertActivationCounter, count_activations
from xpert_pl.sources.experts import UnsupportedModelError, moe_layers


def test_counts_sum_to_tokens_times_top_k(tiny_moe, make_batches):
    batches = {"code": make_batches(2, 2, 12, seed=0), "web": make_batches(3, 1, 7, seed=1)}
    counts = count_activations(tiny_moe, batches, progress=False)
    assert counts.domains == ["code", "web"]
    assert counts.tokens.tolist() == [48, 21]
    assert counts.counts.dtype == torch.int64 and counts.prob_sum.dtype == torch.float64
    assert counts.counts.shape == (4, 2, 8)
    expected = (counts.tokens * counts.top_k).expand(4, 2)
    assert torch.equal(counts.counts.sum(-1), expected)
    # Router probabilities sum to one per token, so prob_sum sums to the token count in every layer.
    torch.testing.assert_close(counts.prob_sum.sum(-1), counts.tokens.double().expand(4, 2))
    freq = counts.frequency()
    torch.testing.assert_close(freq.sum(-1), torch.ones(4, 2, dtype=torch.float64))


def test_counts_match_independent_recomputation(tiny_moe, make_batches):
    """Capture each router's input with a pre-hook and route by hand: softmax(x W^T) -> top-k."""
    captured: dict[int, list[torch.Tensor]] = {}
    layers = moe_layers(tiny_moe)
    handles = [
        layer.router.register_forward_pre_hook(lambda mod, args, i=i: captured.setdefault(i, []).append(args[0]))
        for i, layer in enumerate(layers)
    ]
    try:
        counts = count_activations(tiny_moe, {"d": make_batches(3, 2, 9, seed=3)}, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    for i, layer in enumerate(layers):
        hidden = torch.cat([x.reshape(-1, x.shape[-1]) for x in captured[i]])
        probs = torch.softmax((hidden @ layer.router.weight.detach().T).float(), dim=-1)
        top = probs.topk(layer.top_k, dim=-1).indices
        expected = torch.zeros(layer.num_experts, dtype=torch.int64)
        expected.scatter_add_(0, top.reshape(-1), torch.ones(top.numel(), dtype=torch.int64))
        assert torch.equal(counts.counts[i, 0], expected), f"layer {i}"
        torch.testing.assert_close(counts.prob_sum[i, 0], probs.double().sum(0))


def test_padding_is_not_counted(tiny_moe):
    gen = torch.Generator().manual_seed(7)
    long, short = torch.randint(0, 64, (1, 10), generator=gen), torch.randint(0, 64, (1, 6), generator=gen)
    padded = torch.cat([long, torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], dim=1)])
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with_pad = count_activations(tiny_moe, {"d": [{"input_ids": padded, "attention_mask": mask}]}, progress=False)
    alone = count_activations(tiny_moe, {"d": [{"input_ids": long}, {"input_ids": short}]}, progress=False)
    assert with_pad.tokens.tolist() == alone.tokens.tolist() == [16]
    assert torch.equal(with_pad.counts.sum(-1), alone.counts.sum(-1))
    # Right padding leaves real tokens' states unchanged up to float rounding; allow at most one near-tie flip
    # (two cells) per layer so the test does not depend on the BLAS build.
    assert int((with_pad.counts - alone.counts).abs().sum()) <= 2 * with_pad.num_layers


def test_token_budget_is_exact(tiny_moe, make_batches):
    seen_shapes = []
    handle = moe_layers(tiny_moe)[0].router.register_forward_hook(lambda m, a, o: seen_shapes.append(a[0].shape[0]))
    try:
        counts = count_activations(
            tiny_moe,
            {"a": make_batches(5, 2, 10, seed=0), "b": make_batches(1, 1, 8, seed=1)},
            max_tokens_per_domain=25,
            progress=False,
        )
    finally:
        handle.remove()
    assert counts.tokens.tolist() == [25, 8]  # domain b has fewer tokens than the budget
    assert torch.equal(counts.counts.sum(-1), (counts.tokens * 2).expand(4, 2))
    # a: one full 2x10 batch, then the second cut to its first row's first 5 tokens; no third batch runs.
    assert seen_shapes == [20, 5, 8]
    with pytest.raises(ValueError):
        count_activations(tiny_moe, {"a": make_batches(1)}, max_tokens_per_domain=0, progress=False)


def test_counter_hooks_are_removed_and_model_mode_restored(tiny_moe, make_batches):
    tiny_moe.train()
    with torch.no_grad():  # the first forward lets transformers install its own router hooks
        tiny_moe(input_ids=make_batches(1)[0]["input_ids"])
    before = [len(layer.router._forward_hooks) for layer in moe_layers(tiny_moe)]
    with ExpertActivationCounter(tiny_moe, ["x", "y"]) as counter:
        counter.set_domain("y")
        with torch.no_grad():
            tiny_moe(input_ids=make_batches(1)[0]["input_ids"])
        with pytest.raises(KeyError):
            counter.set_domain("z")
    result = counter.result()
    assert result.tokens.tolist() == [0, 24]
    # transformers installs its own output-capturing hooks on routers, so compare counts rather than expect none.
    assert [len(layer.router._forward_hooks) for layer in moe_layers(tiny_moe)] == before
    count_activations(tiny_moe, {"x": make_batches(1)}, progress=False)
    assert tiny_moe.training


def test_save_load_round_trip(tiny_moe, make_batches, tmp_path):
    counts = count_activations(tiny_moe, {"a": make_batches(1), "b": make_batches(1, seed=2)}, progress=False)
    counts.save(tmp_path, extra_meta={"model": "tiny"})
    loaded = ActivationCounts.load(tmp_path)
    assert loaded.domains == counts.domains and loaded.top_k == 2 and loaded.num_experts == 8
    for name in ("counts", "prob_sum", "tokens"):
        assert torch.equal(getattr(loaded, name), getattr(counts, name))
    meta = __import__("json").loads((tmp_path / "counts.json").read_text())
    assert meta["model"] == "tiny" and meta["num_layers"] == 4 and meta["tokens"] == {"a": 24, "b": 24}


def test_non_moe_model_is_rejected():
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    with pytest.raises(UnsupportedModelError):
        count_activations(LlamaForCausalLM(config), {"d": []}, progress=False)
    with pytest.raises(UnsupportedModelError):
        ExpertActivationCounter(LlamaForCausalLM(config), ["d"])
