"""Fixtures for the analysis tests: a seeded tiny OLMoE, random batches, a router-forced MoE, hand-made counts."""

from __future__ import annotations

import pytest
import torch

from xpert_pl.analysis.counter import ActivationCounts
from xpert_pl.models import OlmoeSource

VOCAB = 64
FORCED_EXPERTS = (2, 5)


@pytest.fixture
def tiny_moe():
    """A randomly initialised 4-layer, 8-expert, top-2 OLMoE in eval mode."""
    torch.manual_seed(0)
    return OlmoeSource("olmoe-tiny").build(VOCAB).eval()


@pytest.fixture
def make_batches():
    """`make_batches(n_batches, batch, length, seed)` -> list of {'input_ids'} dicts."""

    def make(n_batches: int = 2, batch: int = 2, length: int = 12, seed: int = 0) -> list[dict[str, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        return [{"input_ids": torch.randint(0, VOCAB, (batch, length), generator=gen)} for _ in range(n_batches)]

    return make


@pytest.fixture
def forced_experts() -> tuple[int, ...]:
    """The experts `forced_moe` routes every token to."""
    return FORCED_EXPERTS


@pytest.fixture
def forced_moe():
    """A tiny OLMoE whose real forward always routes every token to experts 2 and 5 in every layer.

    Residual dimension 0 is made a large positive constant: the embedding sets it to 100 for every token, and
    no sublayer writes to it (row 0 of each o_proj and of each expert's down_proj is zeroed). After RMSNorm that
    dimension dominates the normalised hidden state with a positive sign, so router rows 2 and 5, given a big
    weight on dimension 0, win the top-2 for any token.
    """
    torch.manual_seed(1)
    model = OlmoeSource("olmoe-tiny").build(VOCAB).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 100.0
        for block in model.model.layers:
            block.self_attn.o_proj.weight[0, :] = 0.0
            block.mlp.experts.down_proj[:, 0, :] = 0.0
            block.mlp.gate.weight[list(FORCED_EXPERTS), 0] = 10.0
    return model


@pytest.fixture
def make_counts():
    """`make_counts(counts[L][D][E], tokens[D], top_k)` -> `ActivationCounts` with domains d0, d1, ..."""

    def make(counts: list[list[list[int]]], tokens: list[int], top_k: int = 1) -> ActivationCounts:
        c = torch.tensor(counts, dtype=torch.int64)
        return ActivationCounts(
            domains=[f"d{i}" for i in range(len(tokens))],
            counts=c,
            prob_sum=c.double(),
            tokens=torch.tensor(tokens, dtype=torch.int64),
            top_k=top_k,
            num_experts=c.shape[-1],
        )

    return make


@pytest.fixture
def random_counts():
    """`random_counts(layers, experts, seed)` -> seeded `ActivationCounts` over domains a, b, c with top-2."""

    def make(layers: int = 3, experts: int = 64, seed: int = 0) -> ActivationCounts:
        gen = torch.Generator().manual_seed(seed)
        c = torch.randint(0, 50, (layers, 3, experts), generator=gen)
        # Tokens consistent with top-2 routing in layer 0, so frequencies are proper shares.
        return ActivationCounts(["a", "b", "c"], c, c.double(), c[0].sum(-1) // 2, top_k=2, num_experts=experts)

    return make
