"""Peak memory of analysis: a bf16 OLMoE checkpoint loaded as `xpert analyze` did (`from_pretrained`) vs as it
does now (`load_for_analysis`, streamed into the model once), then `xpert analyze --precision bfloat16` itself.

Builds once (cached under --workdir) a random-weight OLMoE (H 1024, I 512, 24 experts, 4 layers; about 340 MB of
bf16 safetensors in 4 shards, per-expert keys, as `save_pretrained` writes), a synthetic 3-domain corpus and a BPE
tokenizer. Every measurement is a new process whose peak RSS is read from `getrusage` by a parent that runs only it;
a process that only imports torch, transformers, Lightning and the kit gives the baseline that no loader can avoid.
Reported per side: peak RSS / checkpoint bytes, and (peak RSS - baseline) / checkpoint bytes, the figure that a
large checkpoint approaches (the baseline is about 0.5 GB). Every loader side then counts the same 6 batches of
8 x 128 tokens in bf16, the CLI 3 domains of 1,024 tokens.

    python benchmarks/analysis_memory.py [--workdir /tmp/xpert-analysis-memory]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "analysis_memory.json"
XPERT = str(Path(sys.executable).parent / "xpert")
WORDS = ["court", "statute", "patient", "dose", "market", "vote", "function", "array", "river", "theory", "gene"]
DOMAINS = ("law", "medicine", "news")

# One process runs the command and prints its child's peak RSS in bytes (ru_maxrss is in KiB on Linux).
PEAK = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
)
IMPORTS = "import torch, transformers, lightning, xpert_pl.pipeline.steps"
LOAD_AND_COUNT = """
import sys, torch
{imports}
from xpert_pl.analysis.counter import count_activations
model = {load}
gen = torch.Generator().manual_seed(0)
batches = [{{"input_ids": torch.randint(0, model.config.vocab_size, (8, 128), generator=gen)}} for _ in range(6)]
count_activations(model, {{"d": batches}}, progress=False, precision="bfloat16")
"""
LOADERS = {
    "from_pretrained (before)": (
        "from xpert_pl.models import load_causal_lm",
        "load_causal_lm(sys.argv[1], dtype=torch.bfloat16)",
    ),
    "load_for_analysis, unbounded caches": (
        "from xpert_pl.analysis.loading import load_for_analysis",
        "load_for_analysis(sys.argv[1], torch.bfloat16)",
    ),
    "load_for_analysis + bound_cpu_allocations (after)": (
        "from xpert_pl.analysis.loading import bound_cpu_allocations, load_for_analysis; bound_cpu_allocations()",
        "load_for_analysis(sys.argv[1], torch.bfloat16)",
    ),
}


def build(workdir: Path) -> Path:
    """The cached checkpoint (with its tokenizer) and data root under `workdir`; built on the first run."""
    ckpt = workdir / "ckpt"
    if (ckpt / "model.safetensors.index.json").is_file():
        return ckpt
    import torch
    from transformers import OlmoeConfig, OlmoeForCausalLM

    from xpert_pl.tokenizer import load_tokenizer, train_bpe_tokenizer

    rng, texts = random.Random(0), []
    for domain in DOMAINS:
        folder = workdir / "data" / "corpus" / domain
        folder.mkdir(parents=True, exist_ok=True)
        docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) for _ in range(80)]
        texts += docs
        folder.joinpath(f"{domain}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    train_bpe_tokenizer(texts, workdir / "tok", vocab_size=320)
    tokenizer = load_tokenizer(workdir / "tok")
    config = OlmoeConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, num_experts=24, num_experts_per_tok=4,
                         max_position_embeddings=512, pad_token_id=None, eos_token_id=None)  # fmt: skip
    torch.manual_seed(0)
    OlmoeForCausalLM(config).to(torch.bfloat16).save_pretrained(ckpt, max_shard_size="100MB")
    tokenizer.save_pretrained(ckpt)
    return ckpt


def peak_rss(command: list[str]) -> int:
    """Peak resident bytes of `command`, run as the only child of a fresh process."""
    out = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True, check=True)
    rc, peak = out.stdout.split()[-2:]
    if rc != "0":
        raise RuntimeError(f"{command[:3]} failed ({rc}):\n{out.stderr[-2000:]}")
    return int(peak)


def analyze_command(workdir: Path, ckpt: Path) -> list[str]:
    """`xpert analyze` in bf16 over the synthetic corpus, 1,024 tokens per domain, no plots."""
    out = workdir / "analysis"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    return [XPERT, "analyze", "--config", str(Path(__file__).resolve().parents[1] / "configs/analyze/tiny.yaml"),
            f"--model={ckpt}", f"--data.tokenizer={workdir / 'tok'}", f"--data.data_root={workdir / 'data'}",
            f"--data.cache_dir={workdir / 'cache'}", f"--out_dir={out}", "--max_tokens_per_domain=1024",
            "--plots=false", "--precision=bfloat16"]  # fmt: skip


def measure(workdir: Path) -> dict:
    """Build (cached), then the baseline, both loaders and the CLI, one process each."""
    ckpt = build(workdir)
    ckpt_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    peaks = {"imports only (baseline)": peak_rss([sys.executable, "-c", IMPORTS])}
    for name, (imports, load) in LOADERS.items():
        peaks[name] = peak_rss([sys.executable, "-c", LOAD_AND_COUNT.format(imports=imports, load=load), str(ckpt)])
    peaks["xpert analyze --precision bfloat16 (after)"] = peak_rss(analyze_command(workdir, ckpt))
    base = peaks["imports only (baseline)"]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "checkpoint": "random OLMoE H1024 I512 E24 L4 top-4, bf16, 4 shards, per-expert keys",
        "checkpoint_bytes": ckpt_bytes,
        "peak_rss_bytes": peaks,
        "peak_over_checkpoint": {k: round(v / ckpt_bytes, 3) for k, v in peaks.items()},
        "above_baseline_over_checkpoint": {k: round((v - base) / ckpt_bytes, 3) for k, v in peaks.items()},
    }


def main() -> None:
    """Parse arguments, measure, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/xpert-analysis-memory"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args.workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"checkpoint {result['checkpoint_bytes'] / 1e6:.0f} MB")
    for name, peak in result["peak_rss_bytes"].items():
        ratio, above = result["peak_over_checkpoint"][name], result["above_baseline_over_checkpoint"][name]
        print(f"{name:<50} peak {peak / 1e6:7.0f} MB  x{ratio:.2f} of the checkpoint, x{above:.2f} above baseline")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
