"""Reading a runs directory written by `xpert bench run`: cells, their curves, final metrics and compute.

Layout (see `xpert_pl.layout.RunLayout`): `cells/<scale>/<budget>/<method>/seed<k>/` with `cell.json`,
`metrics.csv`, `config.yaml`, `objective.json`, optionally `sft/` (Rouge-L summary, lm-eval results).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xpert_pl.experiments.matrix import BASELINE
from xpert_pl.layout import CELL_FILE, METRICS_FILE, RunLayout

XPERT = "xpert"

Curve = tuple[list[float], list[float]]


@dataclass
class CellRun:
    """One pre-training run of the matrix, as found on disk.

    Attributes:
        final: last value of every `val/loss*` metric; `rougeL/<set>` (SFT, mean over sampling seeds);
            `lm_eval/<task>/<metric>` (and `sft/lm_eval/...` for the fine-tuned model).
        tokens, student_flops, teacher_flops: the training counters at the last step (`extrapolated` when scaled
            from an earlier logged step).
        problem: why a run marked done cannot be used (e.g. no metrics.csv); None when it can.
    """

    scale: str
    budget: str
    method: str
    seed: int
    status: str
    path: Path
    steps: int | None = None
    tokens_budget: int | None = None
    wall_s: float | None = None
    stage_wall_s: dict[str, float] = field(default_factory=dict)
    reused_from: str | None = None
    """The learning-rate sweep's run this cell's pre-training was copied from (the same configuration), if any."""
    learning_rate: float | None = None
    curves: dict[str, Curve] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    tokens: float | None = None
    student_flops: float | None = None
    teacher_flops: float | None = None
    extrapolated: bool = False
    history_from: float | None = None
    """The first step in metrics.csv when the earlier rows are missing (a run resumed by a kit version whose logger
    deleted them), else None: its final values count, its steps to scratch's final loss do not."""
    problem: str | None = None
    stderr: dict[str, float] = field(default_factory=dict)
    """lm-eval's standard error of each `lm_eval/<task>/<metric>` in `final` (the kit's summaries carry them)."""
    answers: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """`lm_eval/<task>` -> the shares of each answer option among gold answers (`labels`) and the model's picks
    (`acc`, `acc_norm`), where the kit's summary has them (`xpert_pl.evaluation.answers`)."""

    @property
    def usable(self) -> bool:
        return self.status == "done" and self.problem is None

    @property
    def val_curve(self) -> Curve:
        return self.curves.get("val/loss", ([], []))

    @property
    def budget_tokens(self) -> float | None:
        """Tokens the run was given: `tokens_budget`, else the tokens it saw, else its steps (a proxy)."""
        for value in (self.tokens_budget, self.tokens, self.steps):
            if value is not None:
                return float(value)
        return None


@dataclass(frozen=True)
class AbsentCell:
    """A cell the matrix asks for that has no directory (never started)."""

    scale: str
    budget: str
    method: str
    seed: int


@dataclass
class RunsDir:
    """Every cell of a runs directory, the matrix that made it, and lookups over the usable cells."""

    root: Path
    cells: list[CellRun]
    absent: list[AbsentCell]
    matrix_text: str | None
    method_order: list[str]
    source_hf: Path | None = None
    """The source the matrix names (`source.hf`, as the bench resolved it: from the working directory); None: the
    one this folder trained."""

    @property
    def layout(self) -> RunLayout:
        """Where this runs folder's artifacts are."""
        return RunLayout(self.root, self.source_hf)

    def select(self, scale: str, budget: str, method: str) -> list[CellRun]:
        """The usable runs of a (scale, budget, method), by seed."""
        found = [c for c in self.cells if c.usable and (c.scale, c.budget, c.method) == (scale, budget, method)]
        return sorted(found, key=lambda c: c.seed)

    def scales(self) -> list[str]:
        return list(dict.fromkeys(c.scale for c in self.cells))

    def budgets(self, scale: str) -> list[str]:
        """Budgets of a scale with usable runs, smallest token budget first."""
        names = {c.budget for c in self.cells if c.usable and c.scale == scale}
        return sorted(names, key=lambda b: (self.budget_tokens(scale, b), b))

    def largest_budget(self, scale: str) -> str | None:
        budgets = self.budgets(scale)
        return budgets[-1] if budgets else None

    def budget_tokens(self, scale: str, budget: str) -> float:
        """Mean token budget of the usable runs of (scale, budget) (0 when unknown)."""
        values = [c.budget_tokens for c in self.cells if c.usable and (c.scale, c.budget) == (scale, budget)]
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else 0.0

    def methods(self, scale: str, budget: str) -> list[str]:
        """Methods with usable runs at (scale, budget), scratch first, then XPERT, then the matrix's order."""
        present = {c.method for c in self.cells if c.usable and (c.scale, c.budget) == (scale, budget)}
        order = [BASELINE, XPERT, *self.method_order, *sorted(present)]
        return [m for m in dict.fromkeys(order) if m in present]

    def incomplete(self) -> list[CellRun]:
        return sorted((c for c in self.cells if not c.usable), key=lambda c: self.order(c.scale, c.budget, c.method))

    def order(self, scale: str, budget: str, method: str) -> tuple[Any, ...]:
        """Sort key: scales as found, budgets by tokens, scratch, XPERT, then the matrix's method order."""
        scales = self.scales()
        ranks = {m: i for i, m in enumerate(dict.fromkeys([BASELINE, XPERT, *self.method_order]))}
        return (
            scales.index(scale) if scale in scales else len(scales),
            self.budget_tokens(scale, budget),
            budget,
            ranks.get(method, len(ranks)),
            method,
        )


def load_runs(runs_dir: str | Path) -> RunsDir:
    """Read every cell under `<runs_dir>/cells`, and `matrix.yaml` for the cells that never started.

    Raises:
        FileNotFoundError: `runs_dir` has no `cells/` directory.
    """
    root = Path(runs_dir)
    cells_dir = root / "cells"
    if not cells_dir.is_dir():
        raise FileNotFoundError(f"'{root}' has no cells/ directory; is it the out_dir of `xpert bench run`?")
    cells = [read_cell(path) for path in sorted(cells_dir.glob("*/*/*/seed*")) if path.is_dir()]
    matrix_file = root / "matrix.yaml"
    matrix_text = matrix_file.read_text() if matrix_file.is_file() else None
    matrix = _parse_matrix(matrix_text)
    found = {(c.scale, c.budget, c.method, c.seed) for c in cells}
    absent = [a for a in _expected_cells(matrix) if (a.scale, a.budget, a.method, a.seed) not in found]
    methods = [str(m) for m in matrix.get("methods") or {}]
    return RunsDir(root, cells, absent, matrix_text, methods, _given_source(matrix, root))


def _given_source(matrix: dict[str, Any], root: Path) -> Path | None:
    """The matrix's `source.hf` (None: the folder trained its own). A relative path is taken from the directory the
    bench ran in (`root` less the matrix's relative `out_dir`) when it is there, else as given (a Hub id, or a path
    from the working directory)."""
    source = matrix.get("source")
    given = source.get("hf") if isinstance(source, dict) else None
    if not isinstance(given, str) or not given:
        return None
    out_dir, where = Path(str(matrix.get("out_dir") or "")), root.resolve()
    ran_in = len(out_dir.parts) and not out_dir.is_absolute() and where.parts[-len(out_dir.parts) :] == out_dir.parts
    found = where.parents[len(out_dir.parts) - 1] / given if ran_in else None
    return found if found is not None and found.exists() else Path(given)


def read_cell(path: Path) -> CellRun:
    """One cell directory: its record, curves and final metrics (a problem is recorded, never raised)."""
    scale, budget, method = path.parts[-4], path.parts[-3], path.parts[-2]
    record = read_json_or_none(path / CELL_FILE) or {}
    cell = CellRun(
        scale=str(record.get("scale", scale)),
        budget=str(record.get("budget", budget)),
        method=str(record.get("method", method)),
        seed=int(record.get("seed", _seed_of(path.name))),
        status=str(record.get("status", "no cell.json")),
        path=path,
        steps=record.get("steps"),
        tokens_budget=record.get("tokens_budget"),
        wall_s=record.get("wall_s"),
        stage_wall_s=dict(record.get("stage_wall_s") or {}),
        reused_from=record.get("reused_from"),
        learning_rate=record.get("learning_rate"),
    )
    if cell.status == "done":
        _read_results(cell)
    elif record.get("failed_stage"):
        cell.problem = f"failed in stage {record['failed_stage']}"
    elif cell.status == "running":  # the record cannot tell a live run from a killed one
        cell.problem = "not finished: still training, or interrupted (`xpert bench run` again resumes it)"
    return cell


def _read_results(cell: CellRun) -> None:
    metrics = cell.path / METRICS_FILE
    if not metrics.is_file():
        cell.problem = "no metrics.csv"
        return
    rows = read_metrics_csv(metrics)
    cell.curves = {k: curve(rows, k) for k in sorted({k for r in rows for k in r}) if k.startswith("val/loss")}
    if not cell.val_curve[0]:
        cell.problem = "no val/loss in metrics.csv"
        return
    cell.final = {k: values[-1] for k, (_, values) in cell.curves.items()}
    cell.history_from = missing_history(rows, cell.val_curve[0])
    _read_compute(cell, rows)
    cell.final.update(read_rouge(cell.path / "sft"))
    cell.final.update(read_lm_eval(cell.path, "lm_eval"))
    cell.final.update(read_lm_eval(cell.path / "sft", "sft/lm_eval"))
    cell.stderr = {
        **read_lm_eval(cell.path, "lm_eval", "stderr"),
        **read_lm_eval(cell.path / "sft", "sft/lm_eval", "stderr"),
    }
    cell.answers = {**read_answers(cell.path, "lm_eval"), **read_answers(cell.path / "sft", "sft/lm_eval")}


def _read_compute(cell: CellRun, rows: list[dict[str, float]]) -> None:
    """Tokens and FLOPs at the end of the run, from the last logged counters.

    Lightning logs step metrics every `log_every_n_steps`, so the last row may precede the last step: the counters
    grow linearly with steps, so they are scaled by steps / (logged step + 1) and the cell marked `extrapolated`.
    """
    steps, tokens = curve(rows, "train/tokens")
    counters = [last_value(rows, f"train/{part}_flops") for part in ("student", "teacher")]
    factor = 1.0
    if steps and cell.steps and steps[-1] + 1 < cell.steps:
        factor, cell.extrapolated = cell.steps / (steps[-1] + 1), True
    cell.tokens = tokens[-1] * factor if tokens else None
    cell.student_flops, cell.teacher_flops = (None if c is None else c * factor for c in counters)


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a CSVLogger file with empty (and non-numeric) cells dropped, values as floats."""
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in ((k, _float(v)) for k, v in row.items() if k) if v is not None} for row in rows]


def missing_history(rows: list[dict[str, float]], val_steps: list[float]) -> float | None:
    """The first logged step when metrics.csv lacks its early rows: it starts later than one validation interval."""
    steps = [r["step"] for r in rows if "step" in r]
    if len(val_steps) < 2 or not steps:
        return None
    return min(steps) if min(steps) > val_steps[1] - val_steps[0] else None


def curve(rows: list[dict[str, float]], name: str) -> Curve:
    """(steps, values) of a metric in step order; a step logged twice (a resumed run) keeps its last value."""
    by_step = {r["step"]: r[name] for r in rows if name in r and "step" in r}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def last_value(rows: list[dict[str, float]], name: str) -> float | None:
    """The value of `name` at its highest step, None when never logged."""
    steps, values = curve(rows, name)
    return values[-1] if steps else None


def read_rouge(sft_dir: Path) -> dict[str, float]:
    """`rougeL/<set>` -> the set's mean over sampling seeds, from the latest `rougeL_step<n>.json` under `sft_dir`."""
    files = [p for p in sft_dir.rglob("rougeL_step*.json") if _step_of(p) is not None] if sft_dir.is_dir() else []
    if not files:
        return {}
    summary = read_json_or_none(max(files, key=lambda p: (_step_of(p), str(p)))) or {}
    return {f"rougeL/{name}": float(s["mean"]) for name, s in (summary.get("sets") or {}).items() if "mean" in s}


def read_lm_eval(directory: Path, prefix: str, part: str = "metrics") -> dict[str, float]:
    """`<prefix>/<task>/<metric>` from the latest `lm_eval*.json` in `directory` or its `lm_eval/` folder.

    Accepts the kit's summary (`{"tasks": {task: {"metrics": {...}}}}`, written by `callbacks/lm_eval.py` as
    `<log_dir>/lm_eval/lm_eval_step<n>.json`) and lm-eval's own `simple_evaluate` result
    (`{"results": {task: {"acc,none": ...}}}`; stderrs dropped). `part="stderr"`: the kit summary's standard
    errors instead, under the same names.
    """
    data = _latest_lm_eval(directory)
    if isinstance(data.get("tasks"), dict):
        per_task = {t: (e or {}).get(part) or {} for t, e in data["tasks"].items()}
    elif part != "metrics":
        return {}
    else:
        per_task = {t: _lm_eval_metrics(e) for t, e in (data.get("results") or {}).items()}
    return {
        f"{prefix}/{task}/{metric}": float(value)
        for task, metrics in per_task.items()
        for metric, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def read_answers(directory: Path, prefix: str) -> dict[str, dict[str, list[float]]]:
    """`<prefix>/<task>` -> its answer shares, from the latest kit summary in `directory` (as `read_lm_eval`)."""
    tasks = _latest_lm_eval(directory).get("tasks")
    if not isinstance(tasks, dict):
        return {}
    return {f"{prefix}/{t}": e["answers"] for t, e in tasks.items() if isinstance((e or {}).get("answers"), dict)}


def _latest_lm_eval(directory: Path) -> dict[str, Any]:
    """The latest `lm_eval*.json` in `directory` or its `lm_eval/` folder (by step), {} when none."""
    found = [*directory.glob("lm_eval*.json"), *directory.glob("lm_eval/lm_eval*.json")]
    files = sorted(found, key=lambda p: (_step_of(p) or 0, p.name))
    return (read_json_or_none(files[-1]) or {}) if files else {}


def _lm_eval_metrics(entry: dict[str, Any]) -> dict[str, Any]:
    """'acc,none' -> 'acc', 'acc,flt' -> 'acc_flt'; stderrs and non-metric keys (alias) dropped."""
    out = {}
    for key, value in (entry or {}).items():
        if "_stderr" in key or key == "alias":
            continue
        metric, _, filt = key.partition(",")
        out[metric if filt in ("", "none") else f"{metric}_{filt}"] = value
    return out


def _parse_matrix(text: str | None) -> dict[str, Any]:
    try:
        parsed = yaml.safe_load(text) if text else {}
    except yaml.YAMLError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _expected_cells(matrix: dict[str, Any]) -> list[AbsentCell]:
    """The cells `ExperimentMatrix.cells()` would run: every method at the largest budget, sweep methods at all."""
    budgets, methods = matrix.get("budgets") or {}, [str(m) for m in matrix.get("methods") or {}]
    if not budgets or not methods:
        return []
    largest = max(budgets, key=budgets.__getitem__)
    sweep = [str(m) for m in matrix.get("sweep_methods", [BASELINE])]
    scales = matrix.get("scales") or {}

    def seeds(scale: str) -> list:
        own = scales[scale].get("seeds") if isinstance(scales[scale], dict) else None
        return own if own is not None else matrix.get("seeds") or []

    return [
        AbsentCell(str(scale), str(budget), method, int(seed))
        for budget in budgets
        for scale in scales
        for seed in seeds(scale)
        for method in methods
        if budget == largest or method in sweep
    ]


def read_json_or_none(path: Path) -> Any:
    """A JSON file's content, None when it is missing or malformed (a report records problems, never raises)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in ("", None) else None
    except ValueError:
        return None


def _seed_of(name: str) -> int:
    match = re.fullmatch(r"seed(-?\d+)", name)
    return int(match.group(1)) if match else -1


def _step_of(path: Path) -> int | None:
    match = re.search(r"step(\d+)", path.stem)
    return int(match.group(1)) if match else None
