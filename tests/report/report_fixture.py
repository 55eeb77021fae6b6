"""A hand-made runs directory: one scale, two budgets, scratch / XPERT / a control / distillation, seeds 0-2.

Validation curves are logged at steps 0, 25%, 50%, 75% and 100% of the budget. At the long budget XPERT beats
scratch but loses to the `shuffled_xpert` control; a running XPERT cell with an absurd loss (seed 3) must be
excluded, and the other seed-3 cells of the matrix were never started.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

BUDGETS = {"short": (100, 1000), "long": (200, 2000)}  # name -> (steps, tokens)
SEEDS = (0, 1, 2)

# Validation-loss curves (5 points) per budget, method and seed; the last value is the final loss.
CURVES = {
    "long": {
        "scratch": {0: [5.0, 4.0, 3.5, 3.2, 3.00], 1: [5.0, 4.1, 3.6, 3.3, 3.10], 2: [5.0, 4.0, 3.55, 3.25, 3.05]},
        "xpert": {0: [4.5, 3.6, 3.1, 2.95, 2.90], 1: [4.5, 3.7, 3.2, 3.0, 2.97], 2: [4.5, 3.6, 3.15, 2.99, 2.95]},
        "shuffled_xpert": {
            0: [4.4, 3.4, 3.0, 2.85, 2.80],
            1: [4.4, 3.5, 3.05, 2.9, 2.85],
            2: [4.4, 3.45, 3.0, 2.86, 2.82],
        },
        "distillation": {0: [4.6, 3.7, 3.2, 3.0, 2.95], 1: [4.6, 3.8, 3.3, 3.1, 3.04]},
    },
    "short": {
        "scratch": {0: [5.0, 4.4, 4.0, 3.7, 3.50], 1: [5.0, 4.5, 4.1, 3.8, 3.60], 2: [5.0, 4.4, 4.0, 3.75, 3.55]},
        "xpert": {0: [4.5, 4.0, 3.6, 3.4, 3.20], 1: [4.5, 4.0, 3.6, 3.45, 3.25], 2: [4.5, 4.0, 3.6, 3.4, 3.22]},
    },
}
# Per-domain final losses are the overall loss plus these offsets (plus 0.01 x seed for `law`).
DOMAIN_OFFSETS = {"code": 0.2, "law": -0.1}
ROUGE = {"scratch": {0: 20.0, 1: 22.0, 2: 21.0}, "xpert": {0: 24.0, 1: 23.5, 2: 25.0}}
PIQA = {"scratch": {0: 0.60, 1: 0.61, 2: 0.59}, "xpert": {0: 0.62, 1: 0.64, 2: 0.63}}
STUDENT_FLOPS_PER_TOKEN, TEACHER_FLOPS_PER_TOKEN = 6.0e6, 2.0e7


def domain_loss(domain: str, value: float, seed: int) -> float:
    return value + DOMAIN_OFFSETS[domain] + (0.01 * seed if domain == "law" else 0.0)


def write_metrics(path: Path, steps: int, values: list[float], seed: int, teacher: bool) -> None:
    """A sparse CSVLogger file: validation rows at five steps, train rows (tokens, FLOPs) at the last step."""
    tokens = BUDGETS["long" if steps == 200 else "short"][1]
    header = ["epoch", "step", "train/loss", "train/tokens", "train/student_flops", "train/teacher_flops", "val/loss"]
    header += [f"val/loss/{d}" for d in DOMAIN_OFFSETS]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        for i, value in enumerate(values):
            row = {"epoch": 0, "step": i * steps // 4, "val/loss": value}
            row |= {f"val/loss/{d}": domain_loss(d, value, seed) for d in DOMAIN_OFFSETS}
            writer.writerow(row)
        train = {"epoch": 0, "step": steps - 1, "train/loss": values[-1], "train/tokens": tokens}
        train["train/student_flops"] = STUDENT_FLOPS_PER_TOKEN * tokens
        train["train/teacher_flops"] = TEACHER_FLOPS_PER_TOKEN * tokens if teacher else 0.0
        writer.writerow(train)


def write_cell(root: Path, budget: str, method: str, seed: int, values: list[float], status: str = "done") -> Path:
    steps, tokens = BUDGETS[budget]
    cell = root / "cells" / "2l" / budget / method / f"seed{seed}"
    write_metrics(cell / "metrics.csv", steps, values, seed, teacher=method == "distillation")
    record = {"scale": "2l", "budget": budget, "tokens_budget": tokens, "steps": steps, "method": method}
    record |= {"seed": seed, "status": status, "wall_s": 100.0 + 10 * seed + (50 if budget == "long" else 0)}
    record["stage_wall_s"] = {"pretrain": record["wall_s"]}
    (cell / "cell.json").write_text(json.dumps(record))
    config = f"seed_everything: {seed}\nmodel:\n  method: {method}\ntrainer:\n  save_dir: {cell.resolve()}\n"
    (cell / "config.yaml").write_text(config)
    (cell / "objective.json").write_text(json.dumps({"class": "NextTokenObjective", "teacher_flops_per_token": 0}))
    return cell


def write_evaluations(cell: Path, method: str, seed: int) -> None:
    sft = cell / "sft"
    sft.mkdir(parents=True)
    summary = {"step": 30, "settings": {}, "sets": {"dollyeval": {"mean": ROUGE[method][seed], "std": 0.5}}}
    (sft / "rougeL_step30.json").write_text(json.dumps(summary))
    stale = {"step": 10, "settings": {}, "sets": {"dollyeval": {"mean": 99.0, "std": 0.0}}}
    (sft / "rougeL_step10.json").write_text(json.dumps(stale))  # an earlier evaluation: the latest one counts
    results = {"piqa": {"alias": "piqa", "acc,none": PIQA[method][seed], "acc_stderr,none": 0.01}}
    (cell / "lm_eval.json").write_text(json.dumps({"results": results}))


def write_shared(root: Path) -> None:
    heatmaps = root / "shared" / "analysis" / "heatmaps"
    heatmaps.mkdir(parents=True)
    for name in ("consistency.png", "selection_vs_n.png", "layer_00.png"):
        (heatmaps / name).write_bytes(b"\x89PNG\r\n\x1a\n" + name.encode())
    selection = {"strategy": "consistent", "n": 2, "num_experts": 8, "top_k": 2, "score": "E * min_d f"}
    selection["layers"] = [{"layer": 0, "experts": [2, 5], "weights": [0.6, 0.4], "scores": [0.0] * 8}]
    (root / "shared" / "analysis" / "selection.json").write_text(json.dumps(selection))
    (root / "shared" / "bank").mkdir(parents=True)
    matrices = {"gate": {"shape": [64, 32, 2], "ranks": [48, 24, 2], "relative_error": 0.3266, "algorithm": "hooi"}}
    manifest = {"tucker": {"ranks": [0.75, 0.75, 1.0]}, "layers": [{"layer": 0, "matrices": matrices}]}
    (root / "shared" / "bank" / "manifest.json").write_text(json.dumps(manifest))
    (root / "shared" / "source" / "hf").mkdir(parents=True)
    config = {"model_type": "olmoe", "num_hidden_layers": 4, "num_experts": 8, "num_experts_per_tok": 2}
    (root / "shared" / "source" / "hf" / "config.json").write_text(json.dumps(config))


MATRIX = {
    "out_dir": "runs/fixture",
    "scales": {"2l": {"config": "configs/pretrain/tiny.yaml"}},
    "budgets": {"short": 100, "long": 200},
    "seeds": [0, 1, 2, 3],
    "methods": {m: f"configs/methods/{m}.yaml" for m in ("scratch", "xpert", "distillation", "shuffled_xpert")},
    "sweep_methods": ["scratch", "xpert"],
}


def build_runs_dir(root: Path) -> Path:
    """Write the fixture runs directory under `root`; returns `root`."""
    for budget, methods in CURVES.items():
        for method, seeds in methods.items():
            for seed, values in seeds.items():
                cell = write_cell(root, budget, method, seed, values)
                if budget == "long" and method in ROUGE:
                    write_evaluations(cell, method, seed)
    write_cell(root, "long", "xpert", 3, [0.5, 0.3, 0.2, 0.15, 0.1], status="running")  # must not be averaged
    write_cell(root, "short", "scratch", 3, [5.0, 4.0, 3.0, 2.0, 1.0], status="failed")
    write_shared(root)
    (root / "matrix.yaml").write_text("# the fixture's matrix\n" + yaml.safe_dump(MATRIX, sort_keys=False))
    return root
