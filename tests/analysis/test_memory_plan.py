"""The memory estimate from safetensors headers, the refusal when analysis cannot fit, and `auto` choosing bf16."""

from __future__ import annotations

import pytest
import torch
from safety_checks import refused
from transformers import OlmoeConfig, OlmoeForCausalLM

import xpert_pl.analysis.loading as loading
from xpert_pl.analysis.loading import checkpoint_tensors, needed_bytes, parameter_bytes, plan_precision, stored_dtype

CPU = torch.device("cpu")
GIB = 1 << 30


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """A tiny OLMoE stored in bfloat16 (its router and norms too), in two shards, and its parameter count."""
    config = OlmoeConfig(vocab_size=96, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    model = OlmoeForCausalLM(config).to(torch.bfloat16)
    directory = tmp_path_factory.mktemp("bf16")
    model.save_pretrained(directory, max_shard_size=40_000)
    return directory, sum(p.numel() for p in model.parameters())


def test_estimate_reads_headers_in_the_compute_dtype(bf16_checkpoint):
    directory, numel = bf16_checkpoint
    tensors = checkpoint_tensors(directory)
    assert len({t.file for t in tensors.values()}) == 2
    assert stored_dtype(tensors) == torch.bfloat16
    assert parameter_bytes(tensors, torch.bfloat16) == 2 * numel == sum(t.end - t.start for t in tensors.values())
    assert parameter_bytes(tensors, torch.float32) == 4 * numel
    assert needed_bytes(tensors, torch.float32) == 4 * numel + GIB  # small models: the 1 GiB headroom floor
    assert checkpoint_tensors(directory / "absent") is None


def test_auto_picks_float32_when_it_fits_and_the_stored_bf16_when_it_does_not(bf16_checkpoint):
    directory, numel = bf16_checkpoint
    roomy = lambda: 4 * numel + GIB  # noqa: E731
    tight = lambda: 4 * numel + GIB - 1  # noqa: E731
    assert plan_precision(str(directory), "auto", CPU, available=roomy) == (torch.float32, [])
    assert plan_precision(str(directory), "auto", CPU, available=tight) == (torch.bfloat16, [])
    assert plan_precision(str(directory), "bfloat16", CPU, available=tight) == (torch.bfloat16, [])


def test_refusal_names_needed_available_and_the_precision_to_use(bf16_checkpoint):
    directory, numel = bf16_checkpoint
    dtype, problems = plan_precision(str(directory), "float32", CPU, available=lambda: GIB)
    assert dtype == torch.float32 and len(problems) == 1
    need, bf16 = (4 * numel + GIB) / GIB, (2 * numel + GIB) / GIB
    for fragment in (
        f"needs about {need:.1f} GiB",
        "only 1.0 GiB is available",
        f"--precision bfloat16 (needs {bf16:.1f} GiB",
    ):
        assert fragment in problems[0], problems[0]
    _, problems = plan_precision(str(directory), "auto", CPU, available=lambda: GIB)
    assert "in bfloat16" in problems[0] and "--precision" not in problems[0] and "more memory" in problems[0]


def test_analyze_refuses_before_loading_when_memory_is_short(
    tiny_source_dir, tiny_tokenizer_dir, tmp_path, capsys, monkeypatch, no_expensive_work
):
    monkeypatch.setattr(loading, "available_memory", lambda: 256 << 20)
    argv = ["analyze", f"--model={tiny_source_dir}", f"--data.tokenizer={tiny_tokenizer_dir}"]
    argv += [f"--out_dir={tmp_path / 'analysis'}", "--precision=float32"]
    refused(capsys, argv, str(tiny_source_dir), "only 0.2 GiB is available", "--precision bfloat16")
    assert not (tmp_path / "analysis").exists()


def test_cpu_allocation_bounds_keep_an_explicit_onednn_setting(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    loading.bound_cpu_allocations()
    assert loading.os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    loading.bound_cpu_allocations()
    assert loading.os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
