"""Training tokens/s of bench cells on a CPU: one cell with every core as torch threads vs one 1-thread cell per core.

`xpert bench run --jobs N` trains N cells at once, each with cores / N torch threads (`cell_threads`). Whether that
beats one cell at a time depends on how well a student's small matrices keep several threads busy. This trains the
same student (`xpert fit`'s Trainer and CausalLMModule, identical batches) in both arrangements, as fresh processes,
rounds alternating; the parallel arrangement's rate is all cells' measured tokens over the span from the first
cell's clock start to the last one's end. Medians of the rounds. Writes benchmarks/results/cpu_parallel_cells.json.

    python benchmarks/cpu_parallel_cells.py [--preset llama-tiny] [--steps 70] [--warmup 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_parallel_cells.json"


def worker(args: argparse.Namespace) -> None:
    """One cell: train `args.steps` steps with `args.threads` torch threads; print tokens and the clock's span."""
    import torch

    torch.set_num_threads(args.threads)
    from throughput import VOCAB, _StepClock, cpu_trainer, make_batches
    from torch.utils.data import DataLoader

    from xpert_pl.models import DenseStudent
    from xpert_pl.training import CausalLMModule

    batches = make_batches(args.steps, args.batch, args.length)
    torch.manual_seed(0)
    module = CausalLMModule(DenseStudent(args.preset), vocab_size=VOCAB, learning_rate=3e-3, warmup_steps=5)
    clock = _StepClock(args.warmup)
    with tempfile.TemporaryDirectory() as logs:
        cpu_trainer(args.steps, Path(logs), [clock]).fit(module, DataLoader(batches, batch_size=None))
    tokens = sum(b["input_ids"].numel() for b in batches[args.warmup :])
    offset = time.time() - time.perf_counter()  # the clock's perf_counter times on a wall clock all workers share
    print(json.dumps({"tokens": tokens, "start": clock.start + offset, "end": clock.end + offset}))


def run_cells(args: argparse.Namespace, cells: int, threads: int) -> float:
    """Aggregate tokens/s of `cells` worker processes started together, `threads` torch threads each."""
    command = [sys.executable, __file__, "--worker", "--threads", str(threads)]
    command += [f"--{k}={getattr(args, k)}" for k in ("preset", "steps", "warmup", "batch", "length")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(cells)]
    outputs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        if p.returncode:
            raise SystemExit(f"a worker failed (exit status {p.returncode}):\n{err.decode()[-2000:]}")
    spans = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
    wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
    return sum(s["tokens"] for s in spans) / wall


def measure(args: argparse.Namespace, cores: int) -> dict[str, Any]:
    """Each round: one cell with `cores` threads, then `cores` 1-thread cells together; medians and their ratio."""
    arrangements = {f"1 cell x {cores} threads": (1, cores), f"{cores} cells x 1 thread": (cores, 1)}
    rates: dict[str, list[float]] = {name: [] for name in arrangements}
    for round_ in range(args.rounds):
        for name, (cells, threads) in arrangements.items():
            rates[name].append(run_cells(args, cells, threads))
            print(f"round {round_} {name:24s} {rates[name][-1]:9,.0f} tok/s", flush=True)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    single, parallel = medians.values()
    return {"rounds": rates, "tokens_per_s": medians, "speedup": parallel / single}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-tiny")
    parser.add_argument("--steps", type=int, default=70)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    config = {k: v for k, v in vars(args).items() if k not in {"worker", "threads"}}
    result = {"measured": measure(args, cores), "config": config | {"cores": cores, "device": "cpu"}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, rate in result["measured"]["tokens_per_s"].items():
        print(f"{name:24s} {rate:9,.0f} tok/s")
    print(f"speedup of {cores} 1-thread cells: x{result['measured']['speedup']:.2f}")


if __name__ == "__main__":
    main()
