"""benchmarks/gpu_check.py without a GPU: it refuses cleanly, its arithmetic is right, and its three stages run
end to end on CPU at tiny size (the same code the GPU runs, with CPU, float32 and no compile standing in)."""

from __future__ import annotations

import importlib.util
import os
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_without_cuda_it_exits_2_with_one_line(gpu_check, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--out", str(tmp_path / "out.json")])
    assert exit_.value.code == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA device" in out
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA H200", 989.4),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("Tesla T4", None),
    ],
)
def test_peak_flops_by_device_name(gpu_check, name, tflops):
    peak = gpu_check.peak_bf16_flops(name)
    assert peak == (None if tflops is None else pytest.approx(tflops * 1e12))


def test_the_paper_student_is_read_from_its_config(gpu_check):
    spec = gpu_check.student_spec()
    assert (spec.preset, spec.overrides, spec.block_size, spec.batch_size) == ("xpert-16l", {}, 2048, 16)
    assert spec.vocab_size == 50304  # OLMoE-1B-7B's embedding rows: the students share its tokenizer


def test_flops_per_token_and_mfu_of_the_paper_student(gpu_check):
    spec = gpu_check.student_spec()
    d, f, layers, vocab, seq = 2048, 1024, 16, 50304, 2048
    per_layer = 4 * d * d + 3 * d * f + 2 * d  # q, k, v, o; gate, up, down; two RMSNorms (no biases)
    matmul_params = layers * per_layer + d + vocab * d  # + final norm + untied lm_head (not the input lookup)
    expected = 6 * matmul_params + 12 * layers * d * seq
    assert matmul_params == 472_188_928
    assert gpu_check.mfu_flops_per_token(gpu_check.meta_student(spec), seq) == expected == 3_638_439_936
    peak = gpu_check.peak_bf16_flops("NVIDIA H100 80GB HBM3")
    assert gpu_check.model_flops_utilization(122_371, expected, peak) == pytest.approx(0.45, abs=1e-5)
    assert gpu_check.model_flops_utilization(122_371, expected, None) is None


@pytest.fixture
def clean_process_state():
    """Lightning's FSDP2 run leaves a gloo process group and its environment variables behind: remove both."""
    environ = dict(os.environ)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environ)


def test_the_stages_run_end_to_end_at_tiny_size_on_cpu(gpu_check, clean_process_state):
    spec = gpu_check.StudentSpec("llama-tiny", {}, block_size=16, batch_size=2, vocab_size=320)
    stages = gpu_check.Stages("cpu", "32-true", compile=False, source_preset="olmoe-tiny", analysis_batch=(2, 16))
    args = Namespace(mfu_steps=2, warmup_steps=1, fsdp_steps=3, analysis_tokens=128)
    result = gpu_check.run_stages(spec, stages, args)
    mfu, analysis, fsdp = result["mfu"], result["analysis"], result["fsdp_xpert"]
    assert mfu["tokens_per_s"] > 0 and mfu["mfu"] is None  # no peak for a CPU
    assert mfu["attention"] == "sdpa" and not mfu["fused_adamw"] and not mfu["compiled"]
    assert analysis["tokens"] == 128 and analysis["bank_layers"] == 4
    assert fsdp["set_parameters"] == fsdp["ffn_tensors_compared"] == 6  # gate, up, down of 2 layers
    assert fsdp["init_max_abs_difference"] == 0.0  # initialised full, then sharded: exactly the CPU reference
    assert fsdp["losses_finite"] and fsdp["steps"] == 3
    assert result["summary"]["mfu_target_met"] is None
