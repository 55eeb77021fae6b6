"""`load_for_analysis` reads a checkpoint into the same model `from_pretrained` builds, for every family and layout."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_families import FAMILY_NAMES, build_generic, build_model, write_fused_checkpoint
from transformers import AutoModelForCausalLM

import xpert_pl.analysis.loading as loading
from xpert_pl.analysis.loading import load_for_analysis
from xpert_pl.sources.families import FAMILIES


def assert_same_model(directory, dtype: torch.dtype) -> None:
    """The streamed model equals `from_pretrained`'s, tensor by tensor, dtype included."""
    streamed = loading._load_streaming(str(directory), loading.checkpoint_tensors(directory), dtype)
    assert streamed is not None, "every tensor should be placed without falling back"
    reference = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype)
    ours, theirs = streamed.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_expert_checkpoint_streams_into_the_from_pretrained_model(saved_families, family, dtype):
    assert_same_model(saved_families[family][1], dtype)  # stored float32: bfloat16 goes through the buffer


def with_lm_head(model, directory):
    """`write_fused_checkpoint`'s directory with the LM head put back, so nothing is left to random init."""
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["lm_head.weight"] = model.lm_head.weight.detach().contiguous()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


@pytest.mark.parametrize("family", ["olmoe", "mixtral"])
def test_fused_and_renamed_checkpoints_stream_too(saved_families, family, tmp_path):
    model = saved_families[family][0]
    assert_same_model(with_lm_head(model, write_fused_checkpoint(model, tmp_path / "fused")), torch.float32)
    if family == "mixtral":  # original block name on disk, `mlp` in memory
        renamed = write_fused_checkpoint(model, tmp_path / "renamed", rename={".mlp.": ".block_sparse_moe."})
        assert_same_model(with_lm_head(model, renamed), torch.float32)


def test_sharded_bf16_checkpoint_is_read_without_conversion(tmp_path):
    model = build_model("olmoe", seed=2).to(torch.bfloat16)
    model.save_pretrained(tmp_path, max_shard_size=30_000)
    assert len(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values())) > 2
    assert_same_model(tmp_path, torch.bfloat16)


def test_a_tensor_it_cannot_place_falls_back_to_from_pretrained(saved_families, tmp_path, caplog):
    directory = shutil.copytree(saved_families["olmoe"][1], tmp_path / "olmoe")
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["model.norm.renamed"] = tensors.pop("model.norm.weight")
    save_file(tensors, str(directory / "model.safetensors"))
    calls = []

    def fallback(path, trust_remote_code=False, dtype=torch.float32):
        calls.append((path, dtype))
        return "loaded by from_pretrained"

    assert load_for_analysis(str(directory), torch.bfloat16, fallback=fallback) == "loaded by from_pretrained"
    assert calls == [(str(directory), torch.bfloat16)] and "model.norm.weight" in caplog.text


def test_truncated_shard_is_named(saved_families, tmp_path):
    directory = shutil.copytree(saved_families["olmoe"][1], tmp_path / "olmoe")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(ValueError, match="truncated checkpoint"):
        load_for_analysis(str(directory), torch.float32)


# Families whose checkpoints rename tensors on disk beyond the family record's keys (bias buffers, whole
# prefixes): analysis loads them through `from_pretrained` (correct, without the streaming memory saving).
FALLS_BACK = {
    "axk2", "bailing_hybrid", "ernie4_5_moe", "exaone_moe", "flint", "hy_v3", "hy_v4", "kimi_linear", "kolibri1",
    "laguna", "lara_mini", "minimax_m2", "sarvam_moe",
}  # fmt: skip


@pytest.mark.parametrize("model_type", sorted(set(FAMILIES) - set(FAMILY_NAMES)))
def test_every_other_family_streams_or_falls_back_as_expected(model_type, tmp_path):
    """Each family's checkpoint either streams into exactly `from_pretrained`'s model, or goes through it."""
    build_generic(model_type).save_pretrained(tmp_path)
    streamed = loading._load_streaming(str(tmp_path), loading.checkpoint_tensors(tmp_path), torch.float32)
    assert (streamed is None) == (model_type in FALLS_BACK)
    if streamed is not None:
        assert_same_model(tmp_path, torch.float32)
