"""Tucker consolidation of one OLMoE-shaped layer: the ST-HOSVD fast path vs tensorly's HOOI, in one run.

One layer of OLMoE-1B-7B's shape with random weights (std 0.02) for 8 selected experts: gate and up stacked as
(1024 x 2048 x 8), down as (2048 x 1024 x 8), default ranks (0.75, 0.75, 1.0). The fast path is the consolidator's
`algorithm="auto"` (these tensors exceed `fast_path_numel`, so ST-HOSVD runs); the reference is
`algorithm="hooi"` with the consolidator's HOOI defaults (n_iter_max=50, tol=1e-7) unless `--hooi-iters` is given.
The fast path runs `--fast-rounds` times before HOOI and as many times after it; its time per layer is the median
over those rounds (a shared machine's load shows in the spread, also recorded). Threads: torch's and numpy's
defaults (all cores).

    python benchmarks/consolidation.py [--hooi-iters N] [--fast-rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import tensorly
import torch
from threadpoolctl import threadpool_info

from xpert_pl.bank import TuckerConsolidator

RESULTS = Path(__file__).resolve().parent / "results" / "consolidation.json"
SHAPES = {"gate": (1024, 2048, 8), "up": (1024, 2048, 8), "down": (2048, 1024, 8)}
RANKS = (0.75, 0.75, 1.0)


def layer_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """The three stacked expert tensors of one layer, random normal with OLMoE's init std."""
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(*shape, generator=gen) * 0.02 for m, shape in SHAPES.items()}


def run_layer(consolidator: TuckerConsolidator, tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Seconds, relative error, ranks and algorithm per matrix for one pass over the layer."""
    out = {}
    for matrix, tensor in tensors.items():
        start = time.perf_counter()
        result = consolidator.decompose(tensor)
        seconds = time.perf_counter() - start
        out[matrix] = {
            "seconds": seconds,
            "relative_error": result.relative_error,
            "ranks": list(result.ranks),
            "algorithm": result.algorithm,
        }
        print(f"  {matrix}: {result.algorithm} {seconds:.2f} s, relative error {result.relative_error:.6f}", flush=True)
    return out


def fast_rounds(tensors: dict[str, torch.Tensor], rounds: int) -> list[dict[str, dict]]:
    """`rounds` passes of the fast path (`algorithm="auto"`) over the layer."""
    consolidator = TuckerConsolidator(ranks=RANKS, algorithm="auto")
    passes = []
    for i in range(rounds):
        print(f"fast path, round {i + 1}/{rounds}", flush=True)
        passes.append(run_layer(consolidator, tensors))
    return passes


def layer_seconds(layer: dict[str, dict]) -> float:
    return sum(m["seconds"] for m in layer.values())


def mean_error(layer: dict[str, dict]) -> float:
    return statistics.mean(m["relative_error"] for m in layer.values())


def measure(args: argparse.Namespace) -> dict:
    """Fast rounds, one HOOI pass, fast rounds again; the summary figures and everything measured."""
    tensors = layer_tensors()
    load_start = os.getloadavg()[0]
    fast = fast_rounds(tensors, args.fast_rounds)
    hooi_consolidator = TuckerConsolidator(ranks=RANKS, algorithm="hooi")
    if args.hooi_iters is not None:
        hooi_consolidator.n_iter_max = args.hooi_iters
    print(f"HOOI (n_iter_max={hooi_consolidator.n_iter_max}, tol={hooi_consolidator.tol})", flush=True)
    hooi = run_layer(hooi_consolidator, tensors)
    fast += fast_rounds(tensors, args.fast_rounds)
    fast_seconds = [layer_seconds(layer) for layer in fast]
    hooi_error, fast_error = mean_error(hooi), mean_error(fast[0])
    per_matrix = {
        m: {
            "hooi_s": hooi[m]["seconds"],
            "fast_s_median": statistics.median(layer[m]["seconds"] for layer in fast),
            "hooi_rel_error": hooi[m]["relative_error"],
            "fast_rel_error": fast[0][m]["relative_error"],
            "error_ratio": fast[0][m]["relative_error"] / hooi[m]["relative_error"],
            "ranks": hooi[m]["ranks"],
            "fast_algorithm": fast[0][m]["algorithm"],
        }
        for m in SHAPES
    }
    return {
        "hooi_s_per_layer": layer_seconds(hooi),
        "fast_s_per_layer": statistics.median(fast_seconds),
        "hooi_rel_error": hooi_error,
        "fast_rel_error": fast_error,
        "error_ratio": fast_error / hooi_error,
        "fast_s_per_layer_rounds": fast_seconds,
        "fast_s_per_layer_min": min(fast_seconds),
        "per_matrix": per_matrix,
        "targets": {"fast_s_per_layer_max": 3.0, "error_ratio_max": 1.01},
        "config": {
            "shapes": {m: list(s) for m, s in SHAPES.items()},
            "ranks": list(RANKS),
            "weights": "randn * 0.02, seed 0",
            "hooi": {"n_iter_max": hooi_consolidator.n_iter_max, "tol": hooi_consolidator.tol, "init": "svd"},
            "fast_path": {"algorithm": "auto", "fast_path_numel": TuckerConsolidator().fast_path_numel},
            "fast_rounds": 2 * args.fast_rounds,
        },
        "torch": torch.__version__,
        "tensorly": tensorly.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "blas_threads": {info["internal_api"]: info["num_threads"] for info in threadpool_info()},
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
    }


def main() -> None:
    """Parse arguments, measure, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hooi-iters", type=int, default=None, help="HOOI n_iter_max (default: the consolidator's)")
    parser.add_argument("--fast-rounds", type=int, default=3, help="fast-path passes before and after HOOI")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("hooi_s_per_layer", "fast_s_per_layer", "hooi_rel_error", "fast_rel_error", "error_ratio"):
        print(f"{key}: {result[key]:.6g}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
