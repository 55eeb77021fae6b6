"""`extract_bank` and `xpert extract` read the same bank from a live model and from its checkpoint on disk."""

from __future__ import annotations

import json

import pytest
import torch

import xpert_pl.models
import xpert_pl.pipeline.steps as commands
from xpert_pl.bank import KnowledgeBank, TuckerConsolidator, extract_bank
from xpert_pl.provenance import source_fingerprint, source_record
from xpert_pl.sources.checkpoint import CheckpointExperts


def selection_for(layers: list[int], num_experts: int) -> dict:
    """Two or three experts per MoE layer, with unequal weights."""
    records = []
    for i, layer in enumerate(layers):
        count = 2 + i % 2
        experts = [(layer - j) % num_experts for j in range(count)]  # distinct, out of order
        records.append(
            {"layer": layer, "experts": experts, "weights": [0.5, 0.3, 0.2][:count], "scores": [1.0] * count}
        )
    return {"strategy": "consistency", "n": 2, "num_experts": num_experts, "top_k": 2, "domains": ["a"],
            "score": "min_domain_frequency", "layers": records}  # fmt: skip


def assert_same_bank(a: KnowledgeBank, b: KnowledgeBank) -> None:
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys() and a.experts == b.experts
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_bank_from_checkpoint_equals_bank_from_live_model(saved_families, family):
    model, directory = saved_families[family]
    reader = CheckpointExperts(directory)
    selection = selection_for(reader.moe_layer_indices(), reader.num_experts)
    consolidator = TuckerConsolidator(ranks=[0.5, 0.5, 1.0], n_iter_max=5)
    live = extract_bank(model, selection, consolidator, progress=False)
    disk = extract_bank(reader, selection, consolidator, progress=False)
    assert_same_bank(live, disk)
    assert live.manifest["source"] == disk.manifest["source"]
    assert disk.manifest["source"]["num_experts"] == reader.num_experts
    assert disk.manifest["source"]["moe_layers"] == reader.moe_layer_indices()


def test_dense_or_out_of_range_selections_are_rejected_for_both_sources(saved_families):
    model, directory = saved_families["deepseek_v2"]
    for source in (model, CheckpointExperts(directory)):
        dense = selection_for([0], 8)
        with pytest.raises(ValueError, match=r"layer 0 but the source's MoE layers are \[1, 2\]"):
            extract_bank(source, dense, TuckerConsolidator(), progress=False)
        bad = selection_for([1], 8)
        bad["layers"][0]["experts"] = [0, 8]
        with pytest.raises(ValueError, match="distinct ids"):
            extract_bank(source, bad, TuckerConsolidator(), progress=False)


def test_extract_command_reads_a_local_directory_without_loading_the_model(saved_families, tmp_path, monkeypatch):
    model, directory = saved_families["deepseek_v2"]
    selection = {**selection_for([1, 2], 8), "source": source_record(source_fingerprint(directory), directory)}
    path = tmp_path / "selection.json"
    path.write_text(json.dumps(selection))

    def no_load(*args, **kwargs):
        raise AssertionError("the whole model must not be loaded for a local safetensors checkpoint")

    monkeypatch.setattr(commands, "load_causal_lm", no_load)
    monkeypatch.setattr(xpert_pl.models, "load_causal_lm", no_load)
    consolidator = TuckerConsolidator(ranks=[1.0, 1.0, 1.0], n_iter_max=2)
    commands.extract(str(directory), str(path), out_dir=str(tmp_path / "bank"), consolidator=consolidator)
    bank = KnowledgeBank.load(tmp_path / "bank")
    assert_same_bank(bank, extract_bank(model, selection, consolidator, progress=False))
    source = bank.manifest["source"]
    assert source["model"] == str(directory)
    assert source["fingerprint"] == source_fingerprint(CheckpointExperts(directory)) == source_fingerprint(model)


def test_extract_command_loads_a_directory_without_safetensors(saved_families, tmp_path, monkeypatch):
    """A checkpoint in another weight format falls back to loading the model (with a warning)."""
    model, _ = saved_families["olmoe"]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    model.config.to_json_file(str(legacy / "config.json"))
    loaded = []

    def fake_load(path, trust_remote_code=False):
        loaded.append(path)
        return model

    monkeypatch.setattr(xpert_pl.models, "load_causal_lm", fake_load)
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({**selection_for([0], 4), "source": source_record(source_fingerprint(model))}))
    commands.extract(str(legacy), str(path), out_dir=str(tmp_path / "bank"), consolidator=TuckerConsolidator())
    assert loaded == [str(legacy)] and (tmp_path / "bank" / "bank.safetensors").is_file()


@pytest.mark.parametrize("family", ["deepseek_v2", "deepseek_v3", "qwen2_moe"])
def test_analysis_selection_feeds_extract_with_real_layer_indices(family, saved_families):
    """Dense layers have no counts row: selection.json must still name decoder layers, as extract expects."""
    from xpert_pl.analysis import ConsistentExpertSelector, count_activations
    from xpert_pl.sources.experts import moe_layers

    model, path = saved_families[family]
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    counts = count_activations(model, {"a": [{"input_ids": ids}], "b": [{"input_ids": ids.flip(1)}]}, progress=False)
    moe_indices = [layer.index for layer in moe_layers(model)]
    assert counts.layer_indices == moe_indices != list(range(len(moe_indices)))
    selection = ConsistentExpertSelector(n=2).select(counts)
    assert [x.layer for x in selection.layers] == moe_indices
    selection_dict = json.loads(json.dumps({**selection.__dict__, "layers": [x.to_dict() for x in selection.layers]}))
    bank = extract_bank(
        CheckpointExperts(path), selection_dict, TuckerConsolidator(ranks=[1.0, 1.0, 1.0]), progress=False
    )
    assert bank.source_layers == moe_indices
