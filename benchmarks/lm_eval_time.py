"""Wall time of the lm-eval evaluation (BoolQ, HellaSwag, MMLU 5-shot, PIQA, WinoGrande) of a small student on CPU.

Each task is run on its own through `xpert_pl.evaluation.evaluate_lm` (what LMEvalCallback calls), on the data
root's `eval` files, with the batch size lm-eval picks ("auto": the largest up to 64 that runs, searched once per
call), and timed whole: task building, batch-size search and all forward passes. The student is a randomly
initialised `DenseStudent` (weights do not change the time). With `--limit N` each task runs on its first N and then
2N documents (MMLU: of each subject) and the full time is extrapolated linearly from the two (see
`time_task`), labelled as an extrapolation. Writes benchmarks/results/lm_eval_time.json.

    python benchmarks/lm_eval_time.py [--limit 100 --mmlu-limit 10] [--threads 1] [--tasks boolq piqa]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import transformers

from xpert_pl.evaluation import STANDARD_TASKS, evaluate_lm
from xpert_pl.model_card import count_parameters
from xpert_pl.models import DenseStudent
from xpert_pl.tokenizer import load_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "lm_eval_time.json"
# Answer choices per document: a document is this many log-likelihood requests (MMLU's and BoolQ's share one
# context, so lm-eval's logits cache runs them as one forward pass).
CHOICES = {"boolq": 2, "hellaswag": 4, "mmlu": 4, "piqa": 2, "winogrande": 2, "medmcqa": 4}
STUDENT = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 4}


def run_task(model, tokenizer, task: str, limit: int | None, args: argparse.Namespace) -> dict:
    """Evaluate one task, return its time, counts, picked batch size and headline score."""
    start = time.perf_counter()
    summary = evaluate_lm(
        model, tokenizer, tasks=[task], limit=limit, batch_size=args.batch_size, data_root=args.data_root
    )
    entry = summary["tasks"][task]
    return {
        "seconds": time.perf_counter() - start,
        "documents": entry["samples"],
        "requests": entry["samples"] * CHOICES[task],
        "batch_sizes": summary["settings"]["batch_sizes"],
        entry["metric"]: entry["score"],
        "full_documents": entry["samples_original"],
        "full_requests": entry["samples_original"] * CHOICES[task],
    }


def time_task(model, tokenizer, task: str, args: argparse.Namespace) -> dict:
    """The full task, or with --limit N: runs at N and 2N documents and a linear extrapolation to all of them.

    Two points separate the fixed cost of a run (building the task, lm-eval's batch-size search) from the
    marginal cost per document: full = t(2N) + (t(2N) - t(N)) / (d(2N) - d(N)) x (all - d(2N)).
    """
    limit = args.mmlu_limit if task == "mmlu" and args.mmlu_limit else args.limit
    if limit is None:
        return run_task(model, tokenizer, task, None, args)
    small, row = (run_task(model, tokenizer, task, n, args) for n in (limit, 2 * limit))
    added = row["documents"] - small["documents"]
    if added <= 0:  # the task has at most N documents: this is the full run
        return row
    marginal = (row["seconds"] - small["seconds"]) / added
    extrapolated = row["seconds"] + marginal * (row["full_documents"] - row["documents"])
    return {
        **row,
        "at_limit": small,
        "marginal_seconds_per_document": marginal,
        "extrapolated_full_seconds": extrapolated,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(STANDARD_TASKS))
    parser.add_argument("--limit", type=int, default=None, help="first N documents per task (default: all)")
    parser.add_argument("--mmlu-limit", type=int, default=None, help="MMLU's --limit (it is per subject, x57)")
    parser.add_argument("--batch-size", default="auto", help='"auto" (lm-eval picks) or an int')
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--preset", default="llama-tiny-4l", help="DenseStudent preset, made 256 wide")
    parser.add_argument("--tokenizer", default="runs/tokenizer", help="dir or Hub id; `xpert tokenizer` trains one")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.tokenizer)
    torch.manual_seed(0)
    model = DenseStudent(args.preset, STUDENT).build(len(tokenizer))
    tasks = {}
    for task in args.tasks:
        tasks[task] = time_task(model, tokenizer, task, args)
        print(f"{task}: {json.dumps(tasks[task])}", flush=True)
    result = summarise(tasks, args, model, len(tokenizer))
    print(f"total {result['total_seconds']:.1f} s; full (extrapolated): {result['extrapolated_full_total_seconds']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


def summarise(tasks: dict[str, dict], args: argparse.Namespace, model, vocab: int) -> dict:
    import lm_eval

    extrapolated = sum(t.get("extrapolated_full_seconds", t["seconds"]) for t in tasks.values())
    return {
        "total_seconds": sum(t["seconds"] for t in tasks.values()),
        "extrapolated_full_total_seconds": extrapolated if args.limit or args.mmlu_limit else None,
        "tasks": tasks,
        "config": {
            **vars(args),
            "student": {"preset": args.preset, **STUDENT, "parameters": count_parameters(model)},
            "max_length": model.config.max_position_embeddings,
            "vocab": vocab,
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
        "versions": {
            "lm_eval": lm_eval.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }


if __name__ == "__main__":
    main()
