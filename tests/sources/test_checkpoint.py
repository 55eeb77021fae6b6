"""`CheckpointExperts`: expert matrices read from disk equal the live model's, for every family and layout."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_families import FAMILY_NAMES, FAMILY_SPECS, build_model, write_fused_checkpoint
from transformers import LlamaConfig, LlamaForCausalLM

import xpert_pl.sources.checkpoint as checkpoint_module
from xpert_pl.provenance import source_fingerprint
from xpert_pl.sources.checkpoint import CheckpointError, CheckpointExperts
from xpert_pl.sources.experts import MATRICES, SUPPORTED_FAMILIES, UnsupportedModelError, expert_matrix, moe_layers


def assert_same_experts(model, reader: CheckpointExperts) -> None:
    """Every expert matrix of every MoE layer is exactly equal, live and on disk."""
    layers = moe_layers(model)
    assert reader.moe_layer_indices() == [layer.index for layer in layers]
    assert (reader.num_experts, reader.top_k) == (layers[0].num_experts, layers[0].top_k)
    for layer in layers:
        for expert in range(layer.num_experts):
            for matrix in MATRICES:
                live = expert_matrix(layer.experts, expert, matrix)
                disk = reader.expert_matrix(layer.index, expert, matrix)
                assert disk.dtype == torch.float32 and torch.equal(disk, live), (layer.index, expert, matrix)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_per_expert_layout_of_save_pretrained_matches_the_live_model(saved_families, family):
    model, directory = saved_families[family]
    reader = CheckpointExperts(directory)
    assert reader.family.name == family and reader.scoring == FAMILY_SPECS[family][3].scoring
    assert_same_experts(model, reader)
    ids = [3, 0, 1]
    stacked = reader.stack_experts(reader.moe_layer_indices()[-1], ids, "down")
    assert stacked.shape == (32, stacked.shape[1], 3)
    assert torch.equal(stacked[..., 0], reader.expert_matrix(reader.moe_layer_indices()[-1], 3, "down"))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_shared_expert_keys_are_reported(saved_families, family):
    reader = CheckpointExperts(saved_families[family][1])
    shared = FAMILY_SPECS[family][3].shared
    for layer in reader.moe_layer_indices():
        keys = reader.shared_expert_keys(layer)
        if shared is None:
            assert keys == []
        else:
            prefix = f"model.layers.{layer}.mlp.{shared}."
            assert {f"{prefix}{m}_proj.weight" for m in MATRICES} <= set(keys)
            assert all(k.startswith(f"model.layers.{layer}.mlp.shared_expert") for k in keys)


@pytest.mark.parametrize("family", ["olmoe", "mixtral"])
def test_fused_layout_matches_the_live_model(saved_families, family, tmp_path):
    model, _ = saved_families[family]
    directory = write_fused_checkpoint(model, tmp_path / family)
    reader = CheckpointExperts(directory)
    assert "model.layers.0.mlp.experts.gate_up_proj" in reader._weight_map
    assert_same_experts(model, reader)


def test_mixtral_under_transformers_names_and_original_fused_block_name(saved_families, tmp_path):
    """Mixtral per-expert keys named `mlp.experts.{e}.gate_proj` (not w1/w3/w2), and fused `block_sparse_moe`."""
    model, directory = saved_families["mixtral"]
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(directory / "config.json", renamed / "config.json")
    names = {".w1.": ".gate_proj.", ".w3.": ".up_proj.", ".w2.": ".down_proj.", "block_sparse_moe": "mlp"}
    tensors = {}
    for key, tensor in load_file(str(directory / "model.safetensors")).items():
        for old, new in names.items():
            key = key.replace(old, new)
        tensors[key] = tensor
    assert "model.layers.0.mlp.experts.1.gate_proj.weight" in tensors
    save_file(tensors, str(renamed / "model.safetensors"))
    assert_same_experts(model, CheckpointExperts(renamed))
    fused = write_fused_checkpoint(model, tmp_path / "fused", rename={".mlp.": ".block_sparse_moe."})
    assert_same_experts(model, CheckpointExperts(fused))


def test_sharded_checkpoint_opens_only_the_needed_shards(sharded_olmoe, monkeypatch):
    model, directory = sharded_olmoe
    reader = CheckpointExperts(directory)
    opened: list[str] = []
    real_open = checkpoint_module.safe_open

    def spy(path, *args, **kwargs):
        opened.append(path.rsplit("/", 1)[-1])
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "safe_open", spy)
    layer = moe_layers(model)[1]
    for matrix in MATRICES:
        assert torch.equal(
            reader.stack_experts(1, [0, 2], matrix),
            torch.stack([expert_matrix(layer.experts, e, matrix) for e in (0, 2)], dim=-1),
        )
    prefix = "model.layers.1.mlp.experts."
    needed = {f for k, f in reader._weight_map.items() if k.startswith((prefix + "0.", prefix + "2."))}
    assert set(opened) == needed and len(opened) <= 3 * len(needed)  # at most once per shard per call
    assert len(needed) < len(reader.weight_files)
    assert_same_experts(model, reader)


def test_unknown_model_directory_names_every_supported_family(tmp_path):
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    with pytest.raises(UnsupportedModelError) as info:
        CheckpointExperts(tmp_path / "llama")
    assert "llama" in str(info.value) and all(name in str(info.value) for name in SUPPORTED_FAMILIES)


def test_missing_directory_config_or_weights(tmp_path, saved_families):
    with pytest.raises(FileNotFoundError, match="not found"):
        CheckpointExperts(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        CheckpointExperts(tmp_path)
    shutil.copy(saved_families["olmoe"][1] / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        CheckpointExperts(tmp_path)


def test_truncated_safetensors_is_named(saved_families, tmp_path):
    shutil.copytree(saved_families["olmoe"][1], tmp_path / "olmoe")
    weights = tmp_path / "olmoe" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        CheckpointExperts(tmp_path / "olmoe")
    assert str(weights) in str(info.value)


def test_truncated_shard_is_named_when_read(sharded_olmoe, tmp_path):
    directory = shutil.copytree(sharded_olmoe[1], tmp_path / "sharded")
    reader = CheckpointExperts(directory)
    shard = reader._weight_map["model.layers.2.mlp.experts.1.up_proj.weight"]
    (directory / shard).write_bytes((directory / shard).read_bytes()[:100])
    assert torch.equal(reader.expert_matrix(0, 0, "gate"), reader.expert_matrix(0, 0, "gate"))  # other shards fine
    with pytest.raises(CheckpointError, match=shard):
        reader.expert_matrix(2, 1, "up")


def test_key_absent_from_every_shard_is_named(sharded_olmoe, tmp_path):
    directory = shutil.copytree(sharded_olmoe[1], tmp_path / "sharded")
    index_file = directory / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    missing = "model.layers.1.mlp.experts.3.down_proj.weight"
    del index["weight_map"][missing]
    index_file.write_text(json.dumps(index))
    reader = CheckpointExperts(directory)
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        reader.expert_matrix(1, 3, "down")
    index["weight_map"][missing] = "model-99-of-99.safetensors"
    index_file.write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-99-of-99"):
        CheckpointExperts(directory).expert_matrix(1, 3, "down")


def test_bad_layer_expert_or_matrix(saved_families):
    reader = CheckpointExperts(saved_families["deepseek_v2"][1])
    with pytest.raises(ValueError, match=r"MoE layers are \[1, 2\]"):
        reader.expert_matrix(0, 0, "gate")  # the dense first layer
    with pytest.raises(IndexError, match=r"\[0, 8\)"):
        reader.stack_experts(1, [0, 8], "gate")
    with pytest.raises(ValueError, match="matrix must be"):
        reader.expert_matrix(1, 0, "value")


def test_transposed_fused_tensor_is_rejected(tmp_path):
    directory = write_fused_checkpoint(build_model("olmoe"), tmp_path / "olmoe")
    tensors = load_file(str(directory / "model.safetensors"))
    key = "model.layers.0.mlp.experts.down_proj"
    tensors[key] = tensors[key].transpose(1, 2).contiguous()  # (E, I, H) instead of (E, H, I)
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"down_proj' has shape \[4, 16, 32\]"):
        CheckpointExperts(directory).expert_matrix(0, 0, "down")


def test_fingerprint_depends_on_files_not_on_the_path(saved_families, tmp_path):
    directory = saved_families["qwen2_moe"][1]
    copy = shutil.copytree(directory, tmp_path / "copy")
    assert source_fingerprint(CheckpointExperts(directory)) == source_fingerprint(CheckpointExperts(copy))
    other = saved_families["olmoe"][1]
    assert source_fingerprint(CheckpointExperts(directory)) != source_fingerprint(CheckpointExperts(other))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_source_fingerprint_of_the_checkpoint_equals_the_live_models(saved_families, family, tmp_path):
    """One fingerprint per model: read from disk by the family's router keys, or from the live router modules."""
    model, directory = saved_families[family]
    assert source_fingerprint(CheckpointExperts(directory)) == source_fingerprint(model)
    fused = write_fused_checkpoint(model, tmp_path / "fused")  # another layout and a config.json of all fields
    assert source_fingerprint(fused) == source_fingerprint(model)


def test_mixtral_original_router_key_gives_the_same_fingerprint(saved_families, tmp_path):
    model, _ = saved_families["mixtral"]
    original = write_fused_checkpoint(model, tmp_path / "original", rename={".mlp.": ".block_sparse_moe."})
    assert "model.layers.0.block_sparse_moe.gate.weight" in CheckpointExperts(original)._weight_map
    assert source_fingerprint(original) == source_fingerprint(model)


def test_checkpoint_without_a_router_is_named(saved_families, tmp_path):
    directory = write_fused_checkpoint(saved_families["olmoe"][0], tmp_path / "no_router", rename={".gate.": ".x."})
    with pytest.raises(CheckpointError, match=r"no router weight for layer 0; tried keys \['model.layers.0.mlp.gate"):
        source_fingerprint(directory)
