"""Fixtures for the analysis tests: a seeded tiny OLMoE, random batches, and a router-forced MoE."""

from __future__ import annotations

import pytest
import torch

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
