"""The experiment matrix: methods x student scales x token budgets x seeds, plus the shared source pipeline.

A matrix is a YAML file (see `configs/bench/`):

    out_dir: runs/bench-small
    tokenizer: {vocab_size: 4096}          # the BPE tokenizer trained on the corpus as the first shared stage
                                           # (`xpert tokenizer` settings; omit it, or name one in data.tokenizer)
    data: {max_docs_per_domain: 300}       # data-module settings shared by every run (`tokenizer: <dir or Hub id>`
                                           # uses that tokenizer instead of training one)
    source: {config: configs/source/tiny.yaml, steps: 800}         # the source MoE trained here (or `hf: <dir>`)
    analyze: configs/analyze/tiny.yaml
    extract: configs/extract/tiny.yaml
    scales: {2l: {config: configs/pretrain/tiny.yaml, seeds: [0, 1, 2, 3, 4]},  # student configs (config: a
             4l: {config: configs/pretrain/tiny.yaml,                            # file or a list, overrides by
                  overrides: {model.model.init_args.preset: llama-tiny-4l}}}     # dotted name, own seeds)
    budgets: {short: 150, long: 300}                                # optimizer steps per pre-training run
    seeds: [0, 1, 2]                       # the seeds of every scale that names none
    methods: {scratch: configs/methods/scratch.yaml, xpert: configs/methods/xpert.yaml}
    training_overlay: [configs/gpu/single-bf16.yaml]  # optional: laid over every training stage
    extends: configs/bench/reference.yaml  # optional: that matrix, with this file's keys replacing its keys
    sweep_methods: [scratch, xpert]        # methods run at every budget; the others only at the largest
    sft: {config: [configs/sft/dolly.yaml, configs/sft/eval/bench.yaml], steps: 30,  # optional follow-up SFT
          methods: [scratch, xpert], scales: [2l]}                  # at the largest budget (default: all of them)

Every run of a cell gets the same seed for weights and data order across methods, so methods are compared paired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xpert_pl.errors import ConfigError, raise_if_problems
from xpert_pl.paths import config_dir, path_component_problem
from xpert_pl.yaml_io import DuplicateKeyError, load_yaml

BASELINE = "scratch"


@dataclass(frozen=True)
class Stage:
    """A config file (with more config files laid over it and overrides by dotted option name) and, for training
    stages, a step count.

    Attributes:
        configs: config files laid over `config`, in order (`config: [a.yaml, b.yaml]` in the matrix).
        overrides: options by dotted name (`{"model.model.init_args.preset": "llama-tiny-4l"}`), applied last.
        seeds: for a student scale, its own seeds (e.g. 5 for the headline scale, 3 for the others); None: the
            matrix's seeds.
    """

    config: Path
    configs: tuple[Path, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class FollowUp:
    """The follow-up fine-tuning: a training stage run after the cells of `methods` x `scales` (None: all) at the
    largest budget."""

    stage: Stage
    methods: tuple[str, ...] | None = None
    scales: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LRSweep:
    """A learning-rate sweep run before the cells: each of `methods` at every rate, one seed, on `scale` (None: the
    first) at the largest budget. The rate with the lowest final validation loss of the first method (scratch) is
    the learning rate of every cell; the others' best rates are reported beside it.
    """

    rates: tuple[float, ...]
    methods: tuple[str, ...] = (BASELINE,)
    seed: int = 0
    scale: str | None = None


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
    tokenizer: dict[str, int] = field(default_factory=dict)
    sft: FollowUp | None = None
    source_hf: Path | None = None
    lr_sweep: LRSweep | None = None
    training_overlay: tuple[Path, ...] = ()
    """Config files laid over every training stage (source, sweep runs, cells, SFT) after the stage's own."""
    spec: dict[str, Any] = field(default_factory=dict)
    """The matrix's mapping as parsed (for a matrix that `extends` another: resolved)."""
    extended: bool = False
    """Whether the file `extends` another matrix."""

    @property
    def largest_budget(self) -> str:
        return max(self.budgets, key=self.budgets.__getitem__)

    def wants_sft(self, cell: Cell) -> bool:
        """Whether the follow-up fine-tuning runs after `cell`."""
        sft = self.sft
        if sft is None or cell.budget != self.largest_budget:
            return False
        return (sft.methods is None or cell.method in sft.methods) and (sft.scales is None or cell.scale in sft.scales)

    def scale_seeds(self, scale: str) -> list[int]:
        """The seeds of a student scale: its own, else the matrix's."""
        own = self.scales[scale].seeds
        return list(own) if own is not None else list(self.seeds)

    def cells(self) -> list[Cell]:
        """Every pre-training run, in a stable order: budget, scale, seed, method (methods of a seed together)."""
        cells = []
        for budget, steps in sorted(self.budgets.items(), key=lambda kv: kv[1]):
            methods = [m for m in self.methods if budget == self.largest_budget or m in self.sweep_methods]
            for scale in self.scales:
                for seed in self.scale_seeds(scale):
                    cells += [Cell(scale, budget, method, seed, steps) for method in methods]
        return cells


def shipped_or_local(base: Path, name: str | Path) -> Path:
    """`base / name`; a missing `configs/...` path is taken from the shipped configs (`xpert configs`), so a matrix
    runs from any folder when the kit is installed from a wheel."""
    local = base / name
    parts = Path(name).parts
    if local.exists() or Path(name).is_absolute() or not parts or parts[0] != "configs":
        return local
    shipped = config_dir().joinpath(*parts[1:])
    return shipped if shipped.exists() else local


def load_matrix(path: str | Path, root: str | Path | None = None) -> ExperimentMatrix:
    """Parse and validate a matrix YAML; relative config paths resolve against `root` (default: the cwd).

    Raises:
        ConfigError: every problem found, together, each with how to fix it.
    """
    base = Path(root) if root is not None else Path.cwd()
    path = shipped_or_local(Path.cwd(), path)
    raw = _read_matrix(path, base)
    problems: list[str] = []
    matrix = _build(raw, base, problems)
    raise_if_problems(problems)
    matrix.spec, matrix.extended = raw, "extends" in _read_mapping(path)
    return matrix


def _read_matrix(path: Path, base: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A matrix file's mapping; with `extends: <matrix>`, that matrix's mapping with this file's keys replacing its
    top-level keys (e.g. the same matrix with a GPU `training_overlay` and its own `out_dir`)."""
    raw = _read_mapping(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    parent_path = shipped_or_local(base, parent) if isinstance(parent, str) and parent else None
    if parent_path is None or not parent_path.is_file() or parent_path.resolve() in seen:
        problem = "is not a matrix file" if parent_path is None or not parent_path.is_file() else "extends itself"
        raise ConfigError([f"{path}: extends: {parent!r} {problem}; give the path of another matrix YAML"])
    return {**_read_matrix(parent_path, base, (*seen, path.resolve())), **raw}


def _read_mapping(path: Path) -> dict[str, Any]:
    """A matrix file's own mapping (checked to be valid YAML and a mapping)."""
    if not path.is_file():
        raise FileNotFoundError(f"experiment matrix '{path}' not found")
    try:
        raw = load_yaml(path.read_text()) or {}
    except (yaml.YAMLError, DuplicateKeyError) as err:
        raise ConfigError([f"{path} is not valid YAML: {err}"]) from err
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping of matrix keys (see configs/bench/), got {type(raw).__name__}"])
    return raw


def _stage(spec: Any, base: Path, name: str, problems: list[str], needs_steps: bool = False) -> Stage:
    if isinstance(spec, str | list):
        spec = {"config": spec}
    files = spec.get("config") if isinstance(spec, dict) else None
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
        problems.append(f"{name}: give a config path, a list of them, or {{config: <yaml>, overrides: {{...}}}}")
        return Stage(Path("."))
    paths = [shipped_or_local(base, f) for f in files]
    problems += [f"{name}: config '{path}' does not exist" for path in paths if not path.is_file()]
    if "args" in spec:
        problems.append(
            f"{name}.args: command-line strings are no longer taken; write extra config files in `config: [...]` "
            "and options as `overrides: {dotted.name: value}`"
        )
    steps = spec.get("steps")
    if needs_steps and (not _is_int(steps) or steps < 1):
        problems.append(f"{name}: 'steps' must be a positive integer, got {steps!r}")
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and k for k in overrides):
        problems.append(f"{name}.overrides: a mapping of dotted option names to values, got {overrides!r}")
        overrides = {}
    seeds = spec.get("seeds")
    if seeds is not None and not _distinct_ints(seeds):
        problems.append(f"{name}.seeds: a list of distinct integers, got {seeds!r}")
    own_seeds = tuple(seeds) if seeds is not None and _distinct_ints(seeds) else None
    return Stage(paths[0], tuple(paths[1:]), dict(overrides), steps, own_seeds)


def _mapping(raw: dict[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    """`raw[key]` as a mapping with string keys ({} if absent); a problem if it is something else."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {}
    return {str(k): v for k, v in value.items()}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _follow_up(
    spec: Any, base: Path, methods: dict[str, Path], scales: dict[str, Stage], problems: list[str]
) -> FollowUp:
    stage = _stage(spec, base, "sft", problems, needs_steps=True)
    spec = spec if isinstance(spec, dict) else {}
    chosen = {}
    for key, known in (("methods", methods), ("scales", scales)):
        names = spec.get(key)
        if names is not None and not isinstance(names, list):
            problems.append(f"sft.{key}: a list of names, got {names!r}")
        elif names is not None:
            problems += [f"sft.{key}: '{n}' is not one of the {key}" for n in names if str(n) not in known]
            chosen[key] = tuple(str(n) for n in names)
    return FollowUp(stage, chosen.get("methods"), chosen.get("scales"))


def _distinct_ints(values: Any) -> bool:
    return (
        isinstance(values, list)
        and bool(values)
        and all(_is_int(v) for v in values)
        and len(set(values)) == len(values)
    )


def _build(raw: dict[str, Any], base: Path, problems: list[str]) -> ExperimentMatrix:
    known = {"out_dir", "data", "source", "analyze", "extract", "scales", "budgets", "seeds", "methods", "sft"}
    known |= {"sweep_methods", "tokenizer", "lr_sweep", "training_overlay"}
    problems += [f"unknown key '{k}'; known keys: {', '.join(sorted(known))}" for k in raw if k not in known]
    source_spec = raw.get("source", {})
    source_hf = source_spec.get("hf") if isinstance(source_spec, dict) else None
    if source_hf is not None and not isinstance(source_hf, str):
        problems.append(f"source.hf: a Hugging Face model directory or id, got {source_hf!r}")
        source_hf = None
    source = Stage(Path(".")) if source_hf else _stage(source_spec, base, "source", problems, needs_steps=True)
    methods = _methods(_mapping(raw, "methods", problems), base, problems)
    budgets = _mapping(raw, "budgets", problems)
    if not budgets or any(not _is_int(v) or v < 1 for v in budgets.values()):
        problems.append(f"budgets: a mapping name -> positive number of optimizer steps, got {budgets!r}")
        budgets = {}
    seeds = raw.get("seeds") or []
    if not _distinct_ints(seeds):
        problems.append(f"seeds: a list of distinct integers, got {seeds!r}")
        seeds = []
    sweep = raw.get("sweep_methods", [BASELINE])
    if not isinstance(sweep, list):
        problems.append(f"sweep_methods: a list of method names, got {sweep!r}")
        sweep = []
    sweep = [str(m) for m in sweep]
    problems += [f"sweep_methods: '{m}' is not one of the methods" for m in sweep if m not in methods]
    scales = {k: _stage(v, base, f"scales.{k}", problems) for k, v in _mapping(raw, "scales", problems).items()}
    for key, names in (("scales", scales), ("budgets", budgets), ("methods", _mapping(raw, "methods", []))):
        problems += [p for name in names if (p := path_component_problem(name, f"{key} name"))]
    if not scales:
        problems.append("scales: at least one student config")
    out_dir = raw.get("out_dir", "runs/bench")
    if not isinstance(out_dir, str) or not out_dir:
        problems.append(f"out_dir: a directory path, got {out_dir!r}")
        out_dir = "runs/bench"
    sft, data = raw.get("sft"), _mapping(raw, "data", problems)
    return ExperimentMatrix(
        out_dir=base / out_dir,
        source=source,
        analyze=_stage(raw.get("analyze"), base, "analyze", problems),
        extract=_stage(raw.get("extract"), base, "extract", problems),
        scales=scales,
        budgets=budgets,
        seeds=list(seeds),
        methods=methods,
        sweep_methods=sweep,
        data=data,
        tokenizer=_tokenizer(raw, data, problems),
        sft=_follow_up(sft, base, methods, scales, problems) if sft else None,
        source_hf=Path(source_hf) if source_hf else None,
        lr_sweep=_lr_sweep(raw.get("lr_sweep"), methods, scales, problems),
        training_overlay=_overlay(raw.get("training_overlay"), base, problems),
    )


def _overlay(spec: Any, base: Path, problems: list[str]) -> tuple[Path, ...]:
    """The `training_overlay` list: config files laid over every training stage (e.g. a GPU preset)."""
    if spec is None:
        return ()
    if not isinstance(spec, list) or not all(isinstance(f, str) and f for f in spec):
        problems.append(f"training_overlay: a list of config files (e.g. [configs/gpu/single-bf16.yaml]), got {spec!r}")
        return ()
    paths = tuple(shipped_or_local(base, f) for f in spec)
    problems += [f"training_overlay: config '{p}' does not exist" for p in paths if not p.is_file()]
    return paths


def _tokenizer(raw: dict[str, Any], data: dict[str, Any], problems: list[str]) -> dict[str, int]:
    """The `tokenizer` block: `train_tokenizer` settings of the shared tokenizer ({}: its defaults)."""
    if "tokenizer_vocab_size" in data:
        problems.append(
            "data.tokenizer_vocab_size: moved out of the data settings; write `tokenizer: {vocab_size: N}` (the "
            "tokenizer is trained once, as the first shared stage)"
        )
    settings = _mapping(raw, "tokenizer", problems)
    if settings and "tokenizer" in data:
        problems.append("tokenizer: give either the block (a tokenizer is trained) or data.tokenizer (one is named)")
    known = ("vocab_size", "max_chars_per_domain")
    problems += [f"tokenizer.{k}: unknown key; known keys: {', '.join(known)}" for k in settings if k not in known]
    problems += [
        f"tokenizer.{k}: a positive integer, got {v!r}" for k, v in settings.items() if k in known and not _positive(v)
    ]
    return {k: v for k, v in settings.items() if k in known and _positive(v)}


def _positive(value: Any) -> bool:
    return _is_int(value) and value > 0


def _methods(raw: dict[str, Any], base: Path, problems: list[str]) -> dict[str, Path]:
    methods = {}
    for name, path in raw.items():
        if not isinstance(path, str) or not path:
            problems.append(f"methods.{name}: a method YAML path, got {path!r}")
        elif not shipped_or_local(base, path).is_file():
            problems.append(f"methods.{name}: '{base / path}' does not exist")
        else:
            methods[name] = shipped_or_local(base, path)
    if BASELINE not in raw:
        problems.append(f"methods must include the baseline '{BASELINE}' (every comparison is paired against it)")
    return methods


def _lr_sweep(spec: Any, methods: dict[str, Path], scales: dict[str, Stage], problems: list[str]) -> LRSweep | None:
    """The `lr_sweep` block: `{rates: [...], methods: [scratch, xpert], seed: 0, scale: 2l}` (None when absent)."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        problems.append(f"lr_sweep: a mapping {{rates: [...], methods: [...], seed, scale}}, got {spec!r}")
        return None
    rates = spec.get("rates")
    if not isinstance(rates, list) or len(rates) < 2 or not all(isinstance(r, int | float) and r > 0 for r in rates):
        problems.append(f"lr_sweep.rates: at least two positive learning rates, got {rates!r}")
        rates = [1.0]
    chosen = [str(m) for m in spec.get("methods") or [BASELINE]]
    problems += [f"lr_sweep.methods: '{m}' is not one of the methods" for m in chosen if m not in methods]
    if chosen[0] != BASELINE:
        problems.append(f"lr_sweep.methods: the first must be '{BASELINE}' (its best rate is every cell's)")
    scale = spec.get("scale")
    if scale is not None and scale not in scales:
        problems.append(f"lr_sweep.scale: '{scale}' is not one of the scales")
    seed = spec.get("seed", 0)
    if not _is_int(seed):
        problems.append(f"lr_sweep.seed: an integer, got {seed!r}")
        seed = 0
    return LRSweep(tuple(float(r) for r in rates), tuple(chosen), seed, scale)
