"""Layer grouping: several source layers stacked into one Tucker tensor per bank layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xpert_pl.bank import BankIntegrityError, KnowledgeBank, TuckerConsolidator, collapse, extract_bank
from xpert_pl.bank import group_source_layers as group
from xpert_pl.sources.experts import MATRICES, moe_layers, stack_experts


@pytest.mark.parametrize(("count", "groups"), [(5, 2), (5, 1), (5, 5), (16, 8), (16, 12), (7, 3)])
def test_groups_are_contiguous_and_near_equal_like_array_split(count, groups):
    layers = list(range(10, 10 + count))
    expected = [part.tolist() for part in np.array_split(np.array(layers), groups)]
    result = group(layers[::-1], groups)  # the order of the selection does not matter
    assert list(result) == list(range(groups)) and list(result.values()) == expected


def test_grouping_arguments():
    assert group([3, 1, 2]) == {1: [1], 2: [2], 3: [3]}
    assert group([0, 1, 2, 3, 4], 2) == {0: [0, 1, 2], 1: [3, 4]}
    for bad in (0, 6):
        with pytest.raises(ValueError, match=r"group_layers must lie in \[1, 5\]"):
            group([0, 1, 2, 3, 4], bad)


@pytest.fixture(scope="module")
def grouped_bank(olmoe, selection_of) -> KnowledgeBank:
    """Layers 0-3 in two groups, full ranks: each group stacks 2 layers x 2 experts."""
    consolidator = TuckerConsolidator(ranks=[1.0, 1.0, 1.0], n_iter_max=5)
    return extract_bank(olmoe, selection_of(4), consolidator, progress=False, group_layers=2)


def test_grouped_bank_layout(grouped_bank):
    assert grouped_bank.source_layers == [0, 1]
    assert grouped_bank.source_groups == {0: [0, 1], 1: [2, 3]}
    assert grouped_bank.experts == {0: [0, 3, 1, 4], 1: [2, 5, 3, 6]}
    assert grouped_bank.expert_layers == {0: [0, 0, 1, 1], 1: [2, 2, 3, 3]}
    assert grouped_bank.manifest["grouping"] == {"groups": 2, "source_layers": [[0, 1], [2, 3]]}
    # Each layer's weights (0.7, 0.3) halved, so that the group's weights sum to 1.
    assert grouped_bank.weights[1].tolist() == pytest.approx([0.35, 0.15, 0.35, 0.15])
    assert grouped_bank.weights[1].sum().item() == pytest.approx(1.0, abs=1e-7)
    assert grouped_bank.entry(1, "down").factors.shape == (32, 64, 4)


def test_grouped_entry_holds_all_stacked_experts(olmoe, grouped_bank):
    layers = moe_layers(olmoe)
    stacked = torch.cat(
        [stack_experts(layers[2].experts, [2, 5], "up"), stack_experts(layers[3].experts, [3, 6], "up")], -1
    )
    entry = grouped_bank.entry(1, "up")
    assert entry.expert_norm == pytest.approx(
        torch.linalg.matrix_norm(stacked.permute(2, 0, 1)).mean().item(), rel=1e-5
    )
    # At full ranks the collapse is exactly the weighted average of the four experts of both layers.
    expected = (stacked * torch.tensor([0.35, 0.15, 0.35, 0.15])).sum(-1)
    assert torch.allclose(collapse(entry.core, entry.factors.factors, grouped_bank.weights[1]), expected, atol=1e-5)


def test_uneven_groups_weigh_each_layer_equally(olmoe, selection_of):
    selection = selection_of(3)
    consolidator = TuckerConsolidator(ranks=[4, 4, 1.0], n_iter_max=2)
    bank = extract_bank(olmoe, selection, consolidator, progress=False, group_layers=2)
    assert bank.source_groups == {0: [0, 1], 1: [2]}
    assert bank.weights[0].tolist() == pytest.approx([0.35, 0.15, 0.35, 0.15])
    assert bank.weights[1].tolist() == pytest.approx([0.7, 0.3])
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        extract_bank(olmoe, selection, consolidator, progress=False, group_layers=4)


def test_grouped_bank_round_trip(grouped_bank, tmp_path):
    out = grouped_bank.save(tmp_path / "bank")
    loaded = KnowledgeBank.load(out)
    assert loaded.source_layers == [0, 1] and loaded.manifest["grouping"]["groups"] == 2
    assert loaded.source_groups == grouped_bank.source_groups
    assert loaded.expert_layers == grouped_bank.expert_layers
    assert loaded.experts == grouped_bank.experts
    record = json.loads((out / "manifest.json").read_text())["layers"][1]
    assert record["source_layers"] == [2, 3] and record["expert_layers"] == [2, 2, 3, 3]
    assert set(record["matrices"]) == set(MATRICES)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["layers"][0].update(expert_layers=[0, 0, 1]), "do not match its source layers"),
        (lambda m: m["layers"][0].update(expert_layers=[0, 0, 1, 2]), "do not match its source layers"),
        (lambda m: m["grouping"].update(source_layers=[[0], [1, 2, 3]]), "grouping"),
        (lambda m: m["grouping"].update(groups=3), "grouping"),
    ],
)
def test_inconsistent_grouping_is_rejected(grouped_bank, tmp_path, edit, match):
    out = grouped_bank.save(tmp_path / "bank")
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BankIntegrityError, match=match):
        KnowledgeBank.load(out)


def test_ungrouped_bank_records_one_source_layer_each(small_bank, tmp_path):
    assert small_bank.source_groups == {0: [0], 1: [1]}
    assert small_bank.expert_layers == {0: [0, 0], 1: [1, 1]}
    assert small_bank.manifest["grouping"] is None
    out = small_bank.save(tmp_path / "bank")
    manifest = json.loads((out / "manifest.json").read_text())
    # A manifest from before grouping existed (no source_layers, expert_layers, grouping) loads as ungrouped.
    for record in manifest["layers"]:
        del record["source_layers"], record["expert_layers"]
    del manifest["grouping"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    loaded = KnowledgeBank.load(out)
    assert loaded.source_groups == {0: [0], 1: [1]} and loaded.expert_layers == {0: [0, 0], 1: [1, 1]}
