"""Cost of the routing-statistics hooks: plain forward vs `count_activations` on the same batches, in one run.

Both sides compute the same thing: the model's forward with `use_cache=False` and `logits_to_keep=1` (the analysis
needs no full-vocabulary logits, so neither side pays for the LM head), under `torch.inference_mode`, in float32.
The ratio is therefore the cost of the router hooks alone (plus `count_activations`' per-batch bookkeeping).
After a warm-up, every batch runs plain and analysed back to back, in an order that alternates between rounds;
the overhead is the median over rounds of the ratio of their times.

    python benchmarks/analysis_overhead.py [--preset olmoe-small] [--batches 8] [--batch-size 8] [--length 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from xpert_pl.analysis.counter import count_activations, forward_extras
from xpert_pl.models import OlmoeSource

RESULTS = Path(__file__).resolve().parent / "results" / "analysis_overhead.json"
VOCAB = 4096


def plain_pass(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Seconds for the plain forward over every batch (same keyword arguments as the analysis path)."""
    extra = forward_extras(model)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(input_ids=batch["input_ids"], **extra)
    return time.perf_counter() - start


def analysis_pass(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Seconds for `count_activations` over the same batches (one domain, no budget, no progress bar)."""
    start = time.perf_counter()
    count_activations(model, {"bench": batches}, progress=False, precision="float32")
    return time.perf_counter() - start


def paired_round(
    model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], analysis_first: bool
) -> tuple[float, float]:
    """(plain, analysis) seconds of one round: each batch runs both ways back to back."""
    plain = analysis = 0.0
    for batch in batches:
        if analysis_first:
            analysis += analysis_pass(model, [batch])
        plain += plain_pass(model, [batch])
        if not analysis_first:
            analysis += analysis_pass(model, [batch])
    return plain, analysis


def measure(args: argparse.Namespace) -> dict:
    """Warm up, then `rounds` rounds; within a round each batch runs plain and analysed back to back.

    Pairing at the batch level (with the order alternating between rounds) keeps both sides under the same load
    on a shared machine; the ratio reported is the median over rounds of analysis time / plain time.
    """
    torch.manual_seed(0)
    model = OlmoeSource(args.preset).build(VOCAB).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [
        {"input_ids": torch.randint(0, VOCAB, (args.batch_size, args.length), generator=gen)}
        for _ in range(args.batches)
    ]
    plain_pass(model, batches[:1])
    analysis_pass(model, batches[:1])
    rounds = [paired_round(model, batches, analysis_first=i % 2 == 1) for i in range(args.rounds)]
    plain_rounds, analysis_rounds = [p for p, _ in rounds], [a for _, a in rounds]
    tokens = args.batches * args.batch_size * args.length
    return {
        "plain_tokens_per_s": tokens / statistics.median(plain_rounds),
        "analysis_tokens_per_s": tokens / statistics.median(analysis_rounds),
        "overhead_ratio": statistics.median(a / p for a, p in zip(analysis_rounds, plain_rounds, strict=True)),
        "plain_seconds_per_round": plain_rounds,
        "analysis_seconds_per_round": analysis_rounds,
        "config": {**vars(args), "tokens_per_round": tokens, "vocab_size": VOCAB, "compared": "logits_to_keep=1"},
        "model": {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "num_experts")},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "load_average_1min_at_end": os.getloadavg()[0],  # other work on a shared machine shows up here
    }


def main() -> None:
    """Parse arguments, measure, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="olmoe-small")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    result = measure(parser.parse_args())
    result["config"]["out"] = str(result["config"]["out"])
    args_out = Path(result["config"]["out"])
    args_out.parent.mkdir(parents=True, exist_ok=True)
    args_out.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("plain_tokens_per_s", "analysis_tokens_per_s", "overhead_ratio"):
        print(f"{key}: {result[key]:.4g}")
    print(f"written to {args_out}")


if __name__ == "__main__":
    main()
