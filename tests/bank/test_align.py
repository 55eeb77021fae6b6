"""Neuron alignment: permuted copies of an expert are matched back exactly, and an FFN is unchanged by it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xpert_pl.bank.align import NeuronAlignedStack, match_neurons, neuron_features

H, INTER = 12, 20  # hidden, intermediate (neurons)


def expert(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "gate": torch.randn(INTER, H, generator=gen),
        "up": torch.randn(INTER, H, generator=gen),
        "down": torch.randn(H, INTER, generator=gen),
    }


def permuted(weights: dict[str, torch.Tensor], perm: torch.Tensor, noise: float = 0.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    out = {"gate": weights["gate"][perm], "up": weights["up"][perm], "down": weights["down"][:, perm]}
    return {k: v + noise * torch.randn(v.shape, generator=gen) for k, v in out.items()}


def ffn(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ w["gate"].T) * (x @ w["up"].T)) @ w["down"].T


def test_a_permuted_copy_is_matched_back_exactly():
    base, perm = expert(0), torch.randperm(INTER, generator=torch.Generator().manual_seed(1))
    copy = permuted(base, perm)
    order, before, after = match_neurons(neuron_features(**base), neuron_features(**copy))
    assert torch.equal(perm[order], torch.arange(INTER))  # row i of the aligned copy is the reference's neuron i
    assert after > 0.999 and before < 0.5


def test_alignment_keeps_every_expert_the_same_function_and_stacks_it_onto_the_reference():
    experts = {0: expert(0)}
    for e, seed in ((1, 2), (2, 3)):
        experts[e] = permuted(experts[0], torch.randperm(INTER, generator=torch.Generator().manual_seed(seed)), 0.05, e)

    def stack(layer: int, ids: list[int], matrix: str) -> torch.Tensor:
        return torch.stack([experts[e][matrix] for e in ids], dim=-1)

    aligned = NeuronAlignedStack(stack, reference={5: 0})
    stacks = {m: aligned(5, [0, 1, 2], m) for m in ("gate", "up", "down")}
    x = torch.randn(7, H, generator=torch.Generator().manual_seed(9))
    for k, e in enumerate((0, 1, 2)):
        mine = {m: stacks[m][..., k] for m in stacks}
        torch.testing.assert_close(ffn(mine, x), ffn(experts[e], x))  # a permutation changes nothing
        assert (mine["gate"] - experts[0]["gate"]).abs().max() < 0.5  # and puts each neuron where the reference's is
    assert torch.equal(stacks["gate"][..., 0], experts[0]["gate"])  # the reference as it is
    record = aligned.record[5]
    assert record["after"] > 0.99 > 0.5 > record["correlation_before"]


def test_extract_bank_aligns_the_tiny_sources_experts_and_records_it(tiny_source_dir, tiny_analysis_dir):
    import json

    from xpert_pl.bank import TuckerConsolidator, extract_bank
    from xpert_pl.models import load_causal_lm

    source, fast = load_causal_lm(tiny_source_dir), TuckerConsolidator(n_iter_max=3)
    selection = json.loads((tiny_analysis_dir / "selection.json").read_text())
    plain = extract_bank(source, selection, fast, progress=False)
    aligned = extract_bank(source, selection, fast, progress=False, align_neurons=True)
    assert plain.manifest["align_neurons"] is None
    record = aligned.manifest["align_neurons"]
    for layer in selection["layers"]:
        weights, experts = layer["weights"], layer["experts"]
        assert record["reference"][layer["layer"]] == experts[weights.index(max(weights))]
        assert (
            record["correlation"][layer["layer"]]["after"]
            >= record["correlation"][layer["layer"]]["correlation_before"]
        )
    # The reference expert's own matrices are stacked unpermuted: the expert mode's norms are those of plain.
    for key, entries in plain.entries.items():
        assert entries["gate"].expert_norm == pytest.approx(aligned.entries[key]["gate"].expert_norm)
