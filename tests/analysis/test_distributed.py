"""Multi-device counting: 2 CPU processes (gloo, Lightning DDP launched like torchrun) equal 1 process exactly."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from xpert_pl.analysis import count_activations
from xpert_pl.analysis.distributed import ActivationCountingModule, count_activations_distributed, rank_budget
from xpert_pl.models import OlmoeSource

VOCAB = 64
WORLD = 2
# Batches of 2 full rows of 16 tokens: a budget of 64 = 2 batches per domain, one per rank (a multiple of W*B*T).
BUDGET = 64
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return OlmoeSource("olmoe-tiny", overrides=TINY).build(VOCAB).eval()


def _data() -> dict[str, list[dict[str, torch.Tensor]]]:
    """Two domains of 5 batches; the last batch of `b` has a right-padded row."""
    gen = torch.Generator().manual_seed(0)
    data = {d: [{"input_ids": torch.randint(0, VOCAB, (2, 16), generator=gen)} for _ in range(5)] for d in "ab"}
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    data["b"][-1]["attention_mask"] = mask
    return data


def _trainer_kwargs(devices: int) -> dict:
    return {
        "accelerator": "cpu",
        "devices": devices,
        "strategy": "ddp" if devices > 1 else "auto",
        "enable_progress_bar": False,
    }


def _worker(rank: int, port: int, out: str) -> None:
    """One rank, launched the way torchrun launches it (env vars set, so Lightning does not start processes)."""
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(WORLD),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "NODE_RANK": "0",
    }
    os.environ.update(env)
    torch.set_num_threads(1)
    results = [
        count_activations_distributed(_model(), _data(), _trainer_kwargs(WORLD), max_tokens_per_domain=budget)
        for budget in (None, BUDGET)
    ]
    torch.save([(r.counts, r.prob_sum, r.tokens) for r in results], Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_equal_one_process_exactly(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    model, data = _model(), _data()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so the float32 forwards round the same way
    try:
        singles = [count_activations(model, data, max_tokens_per_domain=b, progress=False) for b in (None, BUDGET)]
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for i, (budget, single) in enumerate(zip((None, BUDGET), singles, strict=True)):
        for counts, prob_sum, tokens in (rank[i] for rank in ranks):  # every rank holds the totals
            assert torch.equal(tokens, single.tokens), budget
            assert torch.equal(counts, single.counts), budget
            # Whole batches run as the same forwards; only the order of the float64 sums differs.
            torch.testing.assert_close(prob_sum, single.prob_sum, rtol=1e-12, atol=1e-9)
    assert singles[1].tokens.tolist() == [BUDGET, BUDGET]


def test_single_device_trainer_matches_count_activations():
    model, data = _model(), _data()
    got = count_activations_distributed(model, data, _trainer_kwargs(1), max_tokens_per_domain=40)
    want = count_activations(model, data, max_tokens_per_domain=40, progress=False)
    assert got.tokens.tolist() == [40, 40]
    assert torch.equal(got.counts, want.counts)
    assert got.domains == ["a", "b"]
    # The hooks are gone afterwards.
    assert all(
        not any("ExpertActivationCounter" in repr(h) for h in block.mlp.gate._forward_hooks.values())
        for block in model.model.layers
    )


def test_rank_budget_splits_exactly():
    assert [rank_budget(10, r, 3) for r in range(3)] == [4, 3, 3]
    assert sum(rank_budget(1001, r, 8) for r in range(8)) == 1001
    assert rank_budget(None, 1, 2) is None


def test_spawning_strategy_and_bad_budget_are_refused():
    with pytest.raises(ValueError, match="spawning strategies"):
        count_activations_distributed(_model(), _data(), {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"})
    with pytest.raises(ValueError, match="max_tokens_per_domain"):
        ActivationCountingModule(_model(), ["a"], max_tokens_per_domain=0)
