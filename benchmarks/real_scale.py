"""`xpert analyze` and `xpert extract` on a random-weight checkpoint of OLMoE-1B-7B-0924's exact shape.

The checkpoint has OLMoE-1B-7B-0924's config.json values (`OLMOE_1B_7B_CONFIG`), its on-disk key names (per-expert
`mlp.experts.{e}.gate_proj|up_proj|down_proj.weight`, as the hub checkpoint stores them; transformers 5 fuses them
on load) and its layout: 3 bfloat16 safetensors shards plus `model.safetensors.index.json`. It is built once into
`--work_dir` (cached: a `built.json` records the settings), shard by shard from seeded per-key generators, so at
most one shard is ever in memory. `xpert analyze` (a few thousand tokens, `--precision bfloat16`) and
`xpert extract` then run as child processes; their wall time and peak RSS (psutil polling of the child and its
descendants) are measured, and the figures go to `benchmarks/results/real_scale.json` (`--layers N`: the same
per-layer shapes with N layers, to `real_scale_<N>l.json`).

    python benchmarks/real_scale.py                 # full size: ~14 GB of disk, ~20 min; analysis peaked at 22.5 GB RSS
    python benchmarks/real_scale.py --layers 2      # reduced: 2.1 GB, a few minutes

Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INDEX_FILE = "model.safetensors.index.json"
SHARDS = 3
INIT_STD = 0.02
# allenai/OLMoE-1B-7B-0924's config.json. transformers' OlmoeConfig() defaults equal it except intermediate_size
# (2048 there; the checkpoint's experts have 1024) and rope_theta, which transformers 5 keeps in rope_parameters.
OLMOE_1B_7B_CONFIG: dict[str, Any] = {
    "architectures": ["OlmoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "clip_qkv": None,
    "eos_token_id": 50279,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 1024,
    "max_position_embeddings": 4096,
    "model_type": "olmoe",
    "norm_topk_prob": False,
    "num_attention_heads": 16,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 16,
    "num_key_value_heads": 16,
    "output_router_logits": False,
    "pad_token_id": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "router_aux_loss_coef": 0.01,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 50304,
}


def checkpoint_config(layers: int | None = None, **overrides: Any) -> dict[str, Any]:
    """OLMoE-1B-7B's config, with `layers` decoder layers (None: its 16) and any field overridden."""
    config = {**OLMOE_1B_7B_CONFIG, **overrides}
    if layers is not None:
        config["num_hidden_layers"] = layers
    return config


def tensor_specs(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of the checkpoint, in the hub checkpoint's order (embeddings, layers, head)."""
    hidden, inter, experts = config["hidden_size"], config["intermediate_size"], config["num_experts"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim, vocab = hidden // heads, config["vocab_size"]
    specs = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        specs += [
            (f"{p}.self_attn.q_proj.weight", (heads * head_dim, hidden)),
            (f"{p}.self_attn.k_proj.weight", (kv_heads * head_dim, hidden)),
            (f"{p}.self_attn.v_proj.weight", (kv_heads * head_dim, hidden)),
            (f"{p}.self_attn.o_proj.weight", (hidden, heads * head_dim)),
            (f"{p}.self_attn.q_norm.weight", (heads * head_dim,)),
            (f"{p}.self_attn.k_norm.weight", (kv_heads * head_dim,)),
            (f"{p}.mlp.gate.weight", (experts, hidden)),
        ]
        for e in range(experts):
            q = f"{p}.mlp.experts.{e}"
            specs += [(f"{q}.gate_proj.weight", (inter, hidden)), (f"{q}.up_proj.weight", (inter, hidden))]
            specs.append((f"{q}.down_proj.weight", (hidden, inter)))
        specs += [(f"{p}.input_layernorm.weight", (hidden,)), (f"{p}.post_attention_layernorm.weight", (hidden,))]
    return [*specs, ("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def shard_plan(specs: list[tuple[str, tuple[int, ...]]], shards: int = SHARDS) -> list[list[tuple[str, tuple]]]:
    """`specs` cut, in order, into `shards` contiguous runs of near-equal bytes (a tensor is never split)."""
    total = sum(math.prod(shape) for _, shape in specs)
    plan: list[list[tuple[str, tuple]]] = [[] for _ in range(shards)]
    done = 0
    for key, shape in specs:
        # The shard whose byte range holds this tensor's first element.
        plan[min(shards - 1, done * shards // total)].append((key, shape))
        done += math.prod(shape)
    return [shard for shard in plan if shard]


def shard_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def make_tensor(key: str, shape: tuple[int, ...], seed: int) -> Any:
    """One bf16 tensor, reproducible from (seed, key): norms are ones, matrices normal with OLMoE's init std."""
    import torch

    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    return (torch.randn(shape, generator=gen) * INIT_STD).to(torch.bfloat16)


def build_checkpoint(out: Path, config: dict[str, Any], seed: int = 0) -> int:
    """Write config.json, the shards (one in memory at a time) and the index into `out`; the bytes of the shards."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(tensor_specs(config))
    weight_map, total = {}, 0
    for index, shard in enumerate(plan):
        name = shard_name(index, len(plan))
        tensors = {key: make_tensor(key, shape, seed) for key, shape in shard}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
        print(f"wrote {name} ({len(shard)} tensors)", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return total


def cached_checkpoint(work_dir: Path, config: dict[str, Any], seed: int = 0) -> tuple[Path, int, float]:
    """The checkpoint under `work_dir`, built unless a finished build with the same settings is there:
    (directory, shard bytes, build seconds; 0 when cached)."""
    out = work_dir / f"olmoe-1b-7b-random-{config['num_hidden_layers']}l"
    marker, settings = out / "built.json", {"config": config, "seed": seed, "shards": SHARDS}
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return out, json.loads(marker.read_text())["bytes"], 0.0
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    total = build_checkpoint(out, config, seed)
    marker.write_text(json.dumps({"settings": settings, "bytes": total}))
    return out, total, time.perf_counter() - start


def peak_rss_run(command: list[str], log_file: Path) -> dict[str, Any]:
    """Run `command`, polling the RSS of it and its descendants every 0.2 s: wall seconds and peak RSS bytes."""
    import psutil

    start, peak = time.perf_counter(), 0
    with log_file.open("w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        proc = psutil.Process(child.pid)
        while child.poll() is None:
            peak = max(peak, _tree_rss(proc))
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}); see {log_file}")
    return {"seconds": seconds, "peak_rss_bytes": peak}


def _tree_rss(proc: Any) -> int:
    import psutil

    try:
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:  # the child exited between poll and read
        return 0


def xpert(*args: str) -> list[str]:
    return [sys.executable, "-m", "xpert_pl.cli", *args]


def ensure_tokenizer(work_dir: Path) -> Path:
    """The kit's 4,096-token tokenizer under `work_dir` (random weights: any tokenizer within the vocab does)."""
    tokenizer = work_dir / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        subprocess.run(
            xpert("tokenizer", "--out_dir", str(tokenizer), "--max_chars_per_domain", "200000"), check=True, cwd=ROOT
        )
    return tokenizer


def run_analyze(checkpoint: Path, work_dir: Path, tokens: int) -> dict[str, Any]:
    """`xpert analyze` on one domain with a `tokens` budget, bf16: wall time, peak RSS, load time, tokens/s."""
    out = work_dir / "analysis"
    shutil.rmtree(out, ignore_errors=True)
    command = xpert(
        "analyze", "--model", str(checkpoint), "--out_dir", str(out), "--precision", "bfloat16",
        "--max_tokens_per_domain", str(tokens), "--plots", "false",
        "--data.tokenizer", str(ensure_tokenizer(work_dir)), "--data.domains", '[{"name": "wikipedia"}]',
        "--data.block_size", "256", "--data.batch_size", "4", "--data.max_docs_per_domain", "200",
        "--data.cache_dir", str(work_dir / "cache"),
        "--selector", "xpert_pl.analysis.ConsistentExpertSelector", "--selector.n", "8",
    )  # fmt: skip
    figures = peak_rss_run(command, work_dir / "analyze.log")
    figures.update(_analysis_speed(out, work_dir / "analyze.log"))
    return figures


def _analysis_speed(out: Path, log_file: Path) -> dict[str, Any]:
    """Load seconds and tokens/s as the analysis records them (`timing` in its counts.json)."""
    timing = json.loads((out / "counts.json").read_text()).get("timing") or {}
    return {
        "load_seconds": timing.get("load_seconds"),
        "tokens_per_second": timing.get("tokens_per_second"),
        "tokens": timing.get("tokens"),
        "log_tail": log_file.read_text().splitlines()[-5:],
    }


def run_extract(checkpoint: Path, work_dir: Path) -> dict[str, Any]:
    """`xpert extract` of the analysis' selection: wall time, peak RSS, per-layer timings, bank bytes."""
    out = work_dir / "bank"
    shutil.rmtree(out, ignore_errors=True)
    selection = work_dir / "analysis" / "selection.json"
    command = xpert("extract", "--model", str(checkpoint), "--selection", str(selection), "--out_dir", str(out))
    figures = peak_rss_run(command, work_dir / "extract.log")
    timings = json.loads((out / "manifest.json").read_text())["timings"]
    layers = timings["layers"]
    per = {part: sum(t[f"{part}_seconds"] for t in layers) / len(layers) for part in ("read", "tucker", "write")}
    figures.update(
        layers=len(layers),
        seconds_per_layer=figures["seconds"] / len(layers),
        in_loop_seconds_per_layer=sum(t["seconds"] for t in layers) / len(layers),
        tucker_seconds_per_layer=per["tucker"],
        read_seconds_per_layer=per["read"],
        write_seconds_per_layer=per["write"],
        per_layer=layers,
        bank_bytes=sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
    )
    figures["extract_over_tucker"] = figures["seconds_per_layer"] / per["tucker"]
    figures["in_loop_over_tucker"] = figures["in_loop_seconds_per_layer"] / per["tucker"]
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/xpert_real_scale"))
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: OLMoE-1B-7B's 16)")
    parser.add_argument("--tokens", type=int, default=4096, help="analysis token budget")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = checkpoint_config(args.layers)
    checkpoint, size, build_seconds = cached_checkpoint(args.work_dir, config, args.seed)
    analyze = run_analyze(checkpoint, args.work_dir, args.tokens)
    analyze["peak_rss_over_checkpoint"] = analyze["peak_rss_bytes"] / size
    extract = run_extract(checkpoint, args.work_dir)
    extract["peak_rss_over_checkpoint"] = extract["peak_rss_bytes"] / size
    result = {
        "checkpoint": {"layers": config["num_hidden_layers"], "bytes": size, "shards": SHARDS, "dtype": "bfloat16"},
        "build_seconds": build_seconds,
        "analyze": analyze,
        "extract": extract,
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
    }
    name = "real_scale.json" if args.layers is None else f"real_scale_{args.layers}l.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "extract"}, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
