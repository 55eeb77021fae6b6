"""benchmarks/real_scale.py's CPU-cheap parts: OLMoE-1B-7B's config, key names and shapes (checked against
transformers' own model on the meta device), the shard layout and index (a tiny version loads with
`from_pretrained`), the build cache and the peak-RSS runner."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "real_scale.py"
TINY = {"hidden_size": 64, "intermediate_size": 32, "num_experts": 4, "vocab_size": 128, "num_attention_heads": 4}
TINY |= {"num_key_value_heads": 4, "eos_token_id": 2, "pad_token_id": 1}


@pytest.fixture(scope="module")
def real_scale():
    spec = importlib.util.spec_from_file_location("real_scale", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_scale"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("real_scale", None)


def fused(specs: list[tuple[str, tuple]], experts: int) -> dict[str, tuple]:
    """The on-disk per-expert keys as transformers 5 holds them in memory: gate_up (E, 2I, H), down (E, H, I)."""
    out = {}
    for key, shape in specs:
        if ".mlp.experts." not in key:
            out[key] = shape
        elif key.endswith(".0.gate_proj.weight"):
            prefix = key.removesuffix("0.gate_proj.weight")
            out[prefix + "gate_up_proj"] = (experts, 2 * shape[0], shape[1])
        elif key.endswith(".0.down_proj.weight"):
            out[key.removesuffix("0.down_proj.weight") + "down_proj"] = (experts, *shape)
    return out


def test_config_is_olmoe_1b_7b(real_scale):
    config = real_scale.checkpoint_config()
    expected = {"num_hidden_layers": 16, "hidden_size": 2048, "num_experts": 64, "num_experts_per_tok": 8}
    expected |= {"intermediate_size": 1024, "vocab_size": 50304, "num_attention_heads": 16, "torch_dtype": "bfloat16"}
    assert {k: config[k] for k in expected} == expected
    assert real_scale.checkpoint_config(2)["num_hidden_layers"] == 2
    # 6.92 B parameters, 64 experts x 3 matrices per layer stored per expert.
    specs = real_scale.tensor_specs(config)
    assert sum(math.prod(s) for _, s in specs) == 6_919_161_856
    assert sum(".mlp.experts." in k for k, _ in specs) == 16 * 64 * 3


@pytest.mark.parametrize("layers", [1, 16])
def test_keys_and_shapes_equal_transformers_model(real_scale, layers):
    from transformers import OlmoeConfig, OlmoeForCausalLM

    config = real_scale.checkpoint_config(layers)
    with torch.device("meta"):  # no memory: shapes only
        model = OlmoeForCausalLM(OlmoeConfig(**config))
    live = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert fused(real_scale.tensor_specs(config), config["num_experts"]) == live


def test_shards_are_contiguous_and_balanced(real_scale):
    specs = real_scale.tensor_specs(real_scale.checkpoint_config(2))
    plan = real_scale.shard_plan(specs)
    assert len(plan) == 3 and [entry for shard in plan for entry in shard] == specs
    sizes = [sum(math.prod(s) for _, s in shard) for shard in plan]
    assert max(sizes) / min(sizes) < 1.1


def test_tiny_checkpoint_index_is_valid_and_loads(real_scale, tmp_path):
    from transformers import AutoModelForCausalLM

    from xpert_pl.sources.checkpoint import CheckpointExperts

    config = real_scale.checkpoint_config(1, **TINY)
    out, size, seconds = real_scale.cached_checkpoint(tmp_path, config)
    index = json.loads((out / real_scale.INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert list(index["weight_map"]) == sorted(k for k, _ in real_scale.tensor_specs(config))
    assert index["metadata"]["total_size"] == size == 2 * sum(math.prod(s) for _, s in real_scale.tensor_specs(config))
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.dtype == torch.bfloat16
    gate = real_scale.make_tensor("model.layers.0.mlp.experts.3.gate_proj.weight", (32, 64), seed=0)
    assert torch.equal(model.model.layers[0].mlp.experts.gate_up_proj[3, :32], gate)
    assert torch.equal(CheckpointExperts(out).expert_matrix(0, 3, "gate"), gate.float())
    again = real_scale.cached_checkpoint(tmp_path, config)
    assert seconds > 0 and again == (out, size, 0.0)  # built once, then cached


def test_peak_rss_run_measures_a_child_and_reports_failure(real_scale, tmp_path):
    grow = "import time; x = bytearray(200 * 2**20); time.sleep(1.0)"
    figures = real_scale.peak_rss_run([sys.executable, "-c", grow], tmp_path / "ok.log")
    assert figures["peak_rss_bytes"] > 200 * 2**20 and figures["seconds"] > 0
    with pytest.raises(RuntimeError, match="failed"):
        real_scale.peak_rss_run([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "bad.log")
