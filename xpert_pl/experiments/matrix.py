"""The experiment matrix: methods x student scales x token budgets x seeds, plus the shared source pipeline.

A matrix is a YAML file (see `configs/bench/`):

    out_dir: runs/bench-small
    data: {max_docs_per_domain: 300, tokenizer_vocab_size: 4096}   # data-module settings shared by every run
    source: {config: configs/source/tiny.yaml, steps: 800}         # the source MoE trained here (or `hf: <dir>`)
    analyze: configs/analyze/tiny.yaml
    extract: configs/extract/tiny.yaml
    scales: {2l: {config: configs/pretrain/tiny.yaml, args: []}}   # student configs (+ CLI overrides)
    budgets: {short: 150, long: 300}                                # optimizer steps per pre-training run
    seeds: [0, 1, 2]
    methods: {scratch: configs/methods/scratch.yaml, xpert: configs/methods/xpert.yaml}
    sweep_methods: [scratch, xpert]        # methods run at every budget; the others only at the largest
    sft: {config: configs/sft/dolly.yaml, steps: 30, args: []}      # optional follow-up fine-tuning per cell

Every run of a cell gets the same seed for weights and data order across methods, so methods are compared paired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xpert_pl.errors import raise_if_problems

BASELINE = "scratch"


@dataclass(frozen=True)
class Stage:
    """A config file with extra command-line overrides and, for training stages, a step count."""

    config: Path
    args: tuple[str, ...] = ()
    steps: int | None = None


@dataclass(frozen=True)
class Cell:
    """One pre-training run of the matrix."""

    scale: str
    budget: str
    method: str
    seed: int
    steps: int

    def directory(self, out_dir: Path) -> Path:
        return out_dir / "cells" / self.scale / self.budget / self.method / f"seed{self.seed}"


@dataclass
class ExperimentMatrix:
    """A parsed, validated experiment matrix (see the module docstring for the YAML)."""

    out_dir: Path
    source: Stage
    analyze: Stage
    extract: Stage
    scales: dict[str, Stage]
    budgets: dict[str, int]
    seeds: list[int]
    methods: dict[str, Path]
    sweep_methods: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    sft: Stage | None = None
    source_hf: Path | None = None

    @property
    def largest_budget(self) -> str:
        return max(self.budgets, key=self.budgets.__getitem__)

    def cells(self) -> list[Cell]:
        """Every pre-training run, in a stable order: budget, scale, seed, method (methods of a seed together)."""
        cells = []
        for budget, steps in sorted(self.budgets.items(), key=lambda kv: kv[1]):
            methods = [m for m in self.methods if budget == self.largest_budget or m in self.sweep_methods]
            for scale in self.scales:
                for seed in self.seeds:
                    cells += [Cell(scale, budget, method, seed, steps) for method in methods]
        return cells


def load_matrix(path: str | Path, root: str | Path | None = None) -> ExperimentMatrix:
    """Parse and validate a matrix YAML; relative config paths resolve against `root` (default: the cwd).

    Raises:
        ConfigError: every problem found, together, each with how to fix it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment matrix '{path}' not found")
    raw = yaml.safe_load(path.read_text()) or {}
    base = Path(root) if root is not None else Path.cwd()
    problems: list[str] = []
    matrix = _build(raw, base, problems)
    raise_if_problems(problems)
    return matrix


def _stage(spec: Any, base: Path, name: str, problems: list[str], needs_steps: bool = False) -> Stage:
    if isinstance(spec, str):
        spec = {"config": spec}
    if not isinstance(spec, dict) or "config" not in spec:
        problems.append(f"{name}: give a config path or {{config: <yaml>, args: [...]}}")
        return Stage(Path("."))
    config = base / spec["config"]
    if not config.is_file():
        problems.append(f"{name}: config '{config}' does not exist")
    steps = spec.get("steps")
    if needs_steps and (not isinstance(steps, int) or steps < 1):
        problems.append(f"{name}: 'steps' must be a positive integer, got {steps!r}")
    return Stage(config, tuple(str(a) for a in spec.get("args", [])), steps)


def _build(raw: dict[str, Any], base: Path, problems: list[str]) -> ExperimentMatrix:
    known = {"out_dir", "data", "source", "analyze", "extract", "scales", "budgets", "seeds", "methods", "sft"}
    known |= {"sweep_methods"}
    problems += [f"unknown key '{k}'; known keys: {', '.join(sorted(known))}" for k in raw if k not in known]
    source_spec = raw.get("source", {})
    source_hf = source_spec.get("hf") if isinstance(source_spec, dict) else None
    source = Stage(Path(".")) if source_hf else _stage(source_spec, base, "source", problems, needs_steps=True)
    methods = {str(k): base / v for k, v in (raw.get("methods") or {}).items()}
    problems += [f"methods.{k}: '{v}' does not exist" for k, v in methods.items() if not v.is_file()]
    if BASELINE not in methods:
        problems.append(f"methods must include the baseline '{BASELINE}' (every comparison is paired against it)")
    budgets = raw.get("budgets") or {}
    if not budgets or any(not isinstance(v, int) or v < 1 for v in budgets.values()):
        problems.append(f"budgets: a mapping name -> positive number of optimizer steps, got {budgets!r}")
    seeds = raw.get("seeds") or []
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) for s in seeds):
        problems.append(f"seeds: a list of distinct integers, got {seeds!r}")
    sweep = [str(m) for m in raw.get("sweep_methods", [BASELINE])]
    problems += [f"sweep_methods: '{m}' is not one of the methods" for m in sweep if m not in methods]
    scales = {str(k): _stage(v, base, f"scales.{k}", problems) for k, v in (raw.get("scales") or {}).items()}
    if not scales:
        problems.append("scales: at least one student config")
    return ExperimentMatrix(
        out_dir=base / raw.get("out_dir", "runs/bench"),
        source=source,
        analyze=_stage(raw.get("analyze"), base, "analyze", problems),
        extract=_stage(raw.get("extract"), base, "extract", problems),
        scales=scales,
        budgets={str(k): v for k, v in budgets.items()},
        seeds=list(seeds),
        methods=methods,
        sweep_methods=sweep,
        data=dict(raw.get("data") or {}),
        sft=_stage(raw["sft"], base, "sft", problems, needs_steps=True) if raw.get("sft") else None,
        source_hf=Path(source_hf) if source_hf else None,
    )
