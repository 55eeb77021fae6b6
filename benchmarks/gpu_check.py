"""GPU check in one script (at most about 8 minutes on one H100/H200): the kit's figures on a real accelerator.

1. bf16 MFU of the paper-16l student (configs/pretrain/paper-16l.yaml: preset, block and batch size) trained by
   `CausalLMModule` under the Lightning Trainer with SDPA attention, `torch.compile` and fused AdamW, against the
   anchor of about 42-46 % MFU for 1-3 B models on H100 (llm-foundry's MPT-1B/3B bf16 tables); target >= 45 %.
   FLOPs per token follow llm-foundry's convention: 6 x the matmul parameters (the input embedding is a lookup)
   plus 12 x layers x d_model x sequence length for attention scores (causal masking not discounted).
2. Analysis tokens/s (`count_activations`, bf16) of an OLMoE-1B-7B-shaped source (its exact config, random
   weights built on the GPU), then the XPERT bank of that source (2 experts per layer, full rank).
3. XPERT init of the paper-16l student from that bank plus 50 steps under FSDP2 (`FSDP2Strategy`, the
   configs/gpu/fsdp-bf16.yaml strategy) on one GPU; the initialised FFN weights are compared with a CPU reference.

Writes benchmarks/results/gpu_check.json. Without CUDA it prints one line and exits with status 2.

    python benchmarks/gpu_check.py [--mfu_steps 30] [--fsdp_steps 50] [--analysis_tokens 262144]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "gpu_check.json"
PAPER_CONFIG = REPO / "configs" / "pretrain" / "paper-16l.yaml"
SOURCE_PRESET = "olmoe-1b-7b"
MFU_ANCHOR = {"low": 0.42, "high": 0.46, "source": "llm-foundry MPT-1B/3B, bf16, H100 80GB (benchmarking tables)"}
MFU_TARGET = 0.45
# Dense bf16 tensor-core peak per GPU (vendor datasheets, no sparsity), matched in order against the device name.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.5),
    ("H100", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("B200", 2250.0),
)


@dataclass(frozen=True)
class StudentSpec:
    """What the MFU and FSDP checks train: the paper config's student preset, block and batch size."""

    preset: str
    overrides: dict[str, Any]
    block_size: int
    batch_size: int
    vocab_size: int


def student_spec(config: Path = PAPER_CONFIG) -> StudentSpec:
    """The student of a pre-training YAML, with the 7B source's vocabulary (students share its tokenizer)."""
    import yaml

    from xpert_pl.models import MOE_PRESETS

    spec = yaml.safe_load(config.read_text())
    init_args = spec["model"]["model"].get("init_args") or {}
    data = spec["data"]["init_args"]
    return StudentSpec(
        preset=init_args.get("preset", "llama-tiny"),
        overrides=dict(init_args.get("overrides") or {}),
        block_size=int(data["block_size"]),
        batch_size=int(data["batch_size"]),
        vocab_size=int(MOE_PRESETS[SOURCE_PRESET]["vocab_size"]),
    )


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a GPU by its CUDA name; None for a device not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def mfu_flops_per_token(model: Any, seq_len: int) -> int:
    """Training FLOPs per token in llm-foundry's MFU convention (see the module docstring)."""
    from xpert_pl.training.flops import training_flops_per_token

    flops = training_flops_per_token(model)
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if embedding is not head:  # an untied input embedding is a lookup, no matmul
        flops -= 6 * embedding.numel()
    config = model.config
    return flops + 12 * config.num_hidden_layers * config.hidden_size * seq_len


def model_flops_utilization(tokens_per_s: float, flops_per_token: int, peak_flops: float | None) -> float | None:
    return None if peak_flops is None else tokens_per_s * flops_per_token / peak_flops


def meta_student(spec: StudentSpec) -> Any:
    """The student on the meta device: shapes and parameter counts without memory."""
    import torch

    from xpert_pl.models import DenseStudent

    with torch.device("meta"):
        return DenseStudent(spec.preset, spec.overrides).build(spec.vocab_size)


@dataclass(frozen=True)
class Stages:
    """Where and how the measured stages run: the GPU defaults, or a tiny CPU stand-in (tests)."""

    accelerator: str = "gpu"
    precision: str = "bf16-mixed"
    compile: bool = True
    source_preset: str = SOURCE_PRESET
    analysis_batch: tuple[int, int] = (8, 2048)  # sequences x tokens per analysis batch


class RandomTokens(torch.utils.data.Dataset):
    """`count` blocks of uniform random token ids, the same for a given index (seeded per item)."""

    def __init__(self, count: int, length: int, vocab_size: int):
        self.count, self.length, self.vocab_size = count, length, vocab_size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        return {"input_ids": torch.randint(0, self.vocab_size, (self.length,), generator=generator)}


class StepProbe(L.Callback):
    """Times the steps after `warmup` (device synchronised), keeps each step's loss and, at fit start, the full
    FFN weights (gathered when sharded)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None
        self.losses: list[float] = []
        self.ffn: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(pl_module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # Copies: on one CPU device the gathered tensors are the live parameters, which training then changes.
        self.ffn = {k: v.detach().float().cpu().clone() for k, v in state.items() if ".mlp." in k}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, index: int) -> None:
        if index == self.warmup:
            _synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _synchronize()
        self.end = time.perf_counter()


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _fit(module: Any, spec: StudentSpec, stages: Stages, steps: int, strategy: Any, probe: StepProbe) -> float:
    """Train `steps` steps on random blocks; the timed steps' tokens/s."""
    trainer = L.Trainer(
        accelerator=stages.accelerator,
        devices=1,
        strategy=strategy,
        precision=stages.precision,
        max_steps=steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
    )
    data = RandomTokens(steps * spec.batch_size, spec.block_size, spec.vocab_size)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=spec.batch_size, num_workers=2))
    timed = (steps - probe.warmup) * spec.batch_size * spec.block_size
    return timed / (probe.end - probe.start)


def measure_mfu(spec: StudentSpec, stages: Stages, steps: int, warmup: int) -> dict[str, Any]:
    """Stage 1: tokens/s and MFU of the student under the Trainer (compiled, SDPA, fused AdamW on GPUs)."""
    from xpert_pl.models import DenseStudent
    from xpert_pl.training import CausalLMModule

    L.seed_everything(0, verbose=False)
    model = DenseStudent(spec.preset, spec.overrides)
    module = CausalLMModule(model, vocab_size=spec.vocab_size, compile=stages.compile, warmup_steps=warmup)
    probe = StepProbe(warmup)
    rate = _fit(module, spec, stages, warmup + steps, "auto", probe)
    flops = mfu_flops_per_token(meta_student(spec), spec.block_size)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    mfu = model_flops_utilization(rate, flops, peak_bf16_flops(name))
    optimizer = module.trainer.optimizers[0]
    return {
        "device": name,
        "tokens_per_s": rate,
        "flops_per_token": flops,
        "peak_bf16_flops": peak_bf16_flops(name),
        "mfu": mfu,
        "target": MFU_TARGET,
        "target_met": None if mfu is None else mfu >= MFU_TARGET,
        "anchor": MFU_ANCHOR,
        "attention": module.model.config._attn_implementation,
        "fused_adamw": bool(optimizer.defaults.get("fused")),
        "compiled": getattr(module.model, "_compiled_call_impl", None) is not None,
        "losses_first_last": [probe.losses[0], probe.losses[-1]],
        "timed_steps": steps,
        "tokens_per_step": spec.batch_size * spec.block_size,
        "max_memory_gib": _max_memory_gib(),
    }


def measure_analysis(stages: Stages, tokens: int, bank_dir: Path) -> dict[str, Any]:
    """Stage 2: analysis tokens/s of the random-weight source in bf16 (built on the device), then its bank."""
    from xpert_pl.analysis import ConsistentExpertSelector, count_activations
    from xpert_pl.bank import TuckerConsolidator, extract_bank
    from xpert_pl.models import OlmoeSource

    device = torch.device("cuda" if stages.accelerator == "gpu" else "cpu")
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):
        source = OlmoeSource(stages.source_preset, router_aux_loss=False).build().to(torch.bfloat16)
    _synchronize()
    build_s = time.perf_counter() - started
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # the analysis's peak, not the float32 build's
    rows, length = stages.analysis_batch
    generator = torch.Generator().manual_seed(0)
    vocab = source.config.vocab_size
    shape = (max(2, tokens // (rows * length)), rows, length)
    batches = [{"input_ids": ids} for ids in torch.randint(0, vocab, shape, generator=generator)]
    count_activations(source, {"warmup": batches[:1]}, progress=False)  # kernels, allocator
    _synchronize()
    started = time.perf_counter()
    halves = {"a": batches[: len(batches) // 2], "b": batches[len(batches) // 2 :]}
    counts = count_activations(source, halves, progress=False)
    _synchronize()
    analysis_s = time.perf_counter() - started
    counted = sum(b["input_ids"].numel() for b in batches)
    selection = ConsistentExpertSelector(n=2).select(counts).to_dict()
    started = time.perf_counter()
    bank = extract_bank(source, selection, TuckerConsolidator(ranks=[1.0, 1.0, 1.0]), progress=False)
    bank.save(bank_dir)
    extract_s = time.perf_counter() - started
    parameters = sum(p.numel() for p in source.parameters())
    del source
    return {
        "source_preset": stages.source_preset,
        "parameters": parameters,
        "build_s": build_s,
        "tokens": counted,
        "tokens_per_s": counted / analysis_s,
        "dtype": "bfloat16",
        "extract_s": extract_s,
        "bank_layers": len(selection["layers"]),
        "max_memory_gib": _max_memory_gib(),
    }


def measure_fsdp_xpert(spec: StudentSpec, stages: Stages, bank_dir: Path, steps: int) -> dict[str, Any]:
    """Stage 3: XPERT init of the student, then `steps` steps under FSDP2 on one device; the initialised FFN
    weights (gathered from the shards) against the same initializer run on CPU without sharding."""
    from xpert_pl.initializers import XpertInit
    from xpert_pl.models import DenseStudent
    from xpert_pl.training import CausalLMModule, FSDP2Strategy

    L.seed_everything(0, verbose=False)
    model = DenseStudent(spec.preset, spec.overrides)
    module = CausalLMModule(model, XpertInit(bank=str(bank_dir)), vocab_size=spec.vocab_size, warmup_steps=5)
    probe = StepProbe(warmup=min(5, steps - 1))
    started = time.perf_counter()
    rate = _fit(module, spec, stages, steps, FSDP2Strategy(activation_checkpointing=True), probe)
    fit_s = time.perf_counter() - started
    reference = model.build(spec.vocab_size)
    XpertInit(bank=str(bank_dir)).initialize(reference)
    expected = {k: v for k, v in reference.state_dict().items() if ".mlp." in k}
    differences = [float((probe.ffn[k] - v).abs().max()) for k, v in expected.items()]
    return {
        "steps": steps,
        "fit_s": fit_s,
        "tokens_per_s": rate,
        "set_parameters": len(module.init_report.set_parameters),
        "ffn_tensors_compared": len(differences),
        "init_max_abs_difference": max(differences),
        "losses_first_last": [probe.losses[0], probe.losses[-1]],
        "losses_finite": all(map(math.isfinite, probe.losses)),
        "max_memory_gib": _max_memory_gib(),
    }


def _max_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def run_stages(spec: StudentSpec, stages: Stages, args: argparse.Namespace) -> dict[str, Any]:
    """The three stages in order (the bank of stage 2 feeds stage 3), with a summary of the headline figures."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        mfu = measure_mfu(spec, stages, args.mfu_steps, args.warmup_steps)
        analysis = measure_analysis(stages, args.analysis_tokens, Path(tmp) / "bank")
        fsdp = measure_fsdp_xpert(spec, stages, Path(tmp) / "bank", args.fsdp_steps)
    summary = {
        "device": mfu["device"],
        "mfu": mfu["mfu"],
        "mfu_target_met": mfu["target_met"],
        "analysis_tokens_per_s": analysis["tokens_per_s"],
        "fsdp_xpert_init_max_abs_difference": fsdp["init_max_abs_difference"],
        "fsdp_losses_first_last": fsdp["losses_first_last"],
    }
    versions = {"torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version()}
    return {
        "summary": summary,
        "mfu": mfu,
        "analysis": analysis,
        "fsdp_xpert": fsdp,
        "student": asdict(spec),
        "stages": asdict(stages),
        "versions": versions,
    }


def refuse_without_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a machine with an H100/H200 (nothing was measured)")
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu_steps", type=int, default=30, help="timed steps after the compile warm-up")
    parser.add_argument("--warmup_steps", type=int, default=8)
    parser.add_argument("--fsdp_steps", type=int, default=50)
    parser.add_argument("--analysis_tokens", type=int, default=262_144)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    refuse_without_cuda()
    started = time.perf_counter()
    result = run_stages(student_spec(), Stages(), args)
    result["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
