"""The learning-rate sweep of a matrix: the swept methods at every rate (one seed, the headline scale, the largest
budget) before the cells; scratch's best rate becomes every cell's learning rate, so no initialisation can win by
compensating a mis-set rate, and XPERT's own best rate is reported beside it."""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from xpert_pl.artifacts import plain_json, read_json, write_json
from xpert_pl.experiments.matrix import Cell, LRSweep
from xpert_pl.experiments.stages import record_seconds
from xpert_pl.layout import HF_DIR, METRICS_FILE, hf_config, last_validation, run_last_checkpoint, sweep_wall_key
from xpert_pl.pipeline.config import merge

# The runner and its FitCall are passed in (typed `Any`): it imports this module when a matrix has a sweep, and a
# type import the other way would make the two modules a cycle.
MatrixRunner = Any
FitCall = Any
FIT_CALL_FILE = "fit_call.json"  # a sweep run's configuration, as the runner built it

log = logging.getLogger(__name__)


class SweepRunFailed(RuntimeError):
    """A learning-rate sweep run did not finish: no rate can be chosen (its log names why)."""


def sweep_cell(runner: MatrixRunner, sweep: LRSweep, method: str) -> Cell:
    """The cell whose settings a sweep run of `method` uses (before its learning rate is set)."""
    matrix = runner.matrix
    scale = sweep.scale or next(iter(matrix.scales))
    return Cell(scale, matrix.largest_budget, method, sweep.seed, matrix.budgets[matrix.largest_budget])


def run_lr_sweep(runner: MatrixRunner, sweep: LRSweep) -> dict[str, Any]:
    """Train (or reuse) every (method, rate) run, `runner.jobs` at a time as the cells are, write the sweep's record
    and return it (`chosen`: the rate)."""
    from concurrent.futures import ThreadPoolExecutor

    runs = [(method, rate, sweep_call(runner, sweep, method, rate)) for method in sweep.methods for rate in sweep.rates]
    missing = [run for run in runs if not hf_config(run[2].run_dir / HF_DIR).is_file()]
    with ThreadPoolExecutor(max_workers=max(1, runner.jobs)) as pool:
        list(pool.map(lambda run: train_sweep_run(runner, *run), missing))  # list(): a run's error is raised here
    unfinished = [call.run_dir for _, _, call in runs if not hf_config(call.run_dir / HF_DIR).is_file()]
    if unfinished:
        # A rate whose run failed midway has a partial loss that must not compete, and without it the best rate
        # is not known: no cell starts at a rate chosen from part of the sweep.
        logs = ", ".join(str(run_dir / "pretrain.log") for run_dir in unfinished)
        raise SweepRunFailed(
            f"{len(unfinished)} run(s) of the learning-rate sweep did not finish (see {logs}); "
            "rerun the bench to resume them"
        )
    losses: dict[str, dict[str, float | None]] = {method: {} for method in sweep.methods}
    for method, rate, call in runs:
        losses[method][f"{rate:g}"] = last_validation(call.run_dir / METRICS_FILE).get("val/loss")
    record = sweep_record(sweep, losses)
    write_json(runner.layout.lr_sweep, record)
    return record


_WALL_TIMES_LOCK = threading.Lock()
"""Parallel sweep runs add their seconds to one file."""


def train_sweep_run(runner: MatrixRunner, method: str, rate: float, call: FitCall) -> None:
    """Train one sweep run and record its configuration (on success) and its seconds."""
    start = time.perf_counter()
    status = runner.launch(call, call.run_dir / "pretrain.log")
    if status == 0:
        write_json(call.run_dir / FIT_CALL_FILE, call.config)  # what finished_twin compares a cell with
    with _WALL_TIMES_LOCK:
        record_seconds(runner.layout.wall_times, {sweep_wall_key(method, rate): time.perf_counter() - start})
    log.info("[bench] lr sweep %s at %g: exit status %d", method, rate, status)


def sweep_call(runner: MatrixRunner, sweep: LRSweep, method: str, rate: float) -> FitCall:
    """The sweep's run of `method` at `rate` (resuming from its last checkpoint when it has one)."""
    call = runner.pretrain_call(sweep_cell(runner, sweep, method))
    run_dir = runner.layout.lr_sweep_run(method, rate)
    resume = run_last_checkpoint(run_dir) is not None
    config = merge(call.config, {"model": {"learning_rate": rate}})
    return dataclasses.replace(call, config=config, run_dir=run_dir, resume=resume, overwrite=not resume)


def finished_twin(runner: MatrixRunner, call: FitCall) -> Path | None:
    """The finished sweep run that was trained with `call`'s configuration (a headline cell of a swept method, at the
    sweep's seed and the chosen rate), so the cell reuses it rather than training the same run twice. The run's
    recorded configuration is compared, not today's YAMLs: a run from before an edit is never taken."""
    sweep = runner.matrix.lr_sweep
    if sweep is None or runner.learning_rate is None:
        return None
    wanted = plain_json(call.config)
    for method in sweep.methods:
        run_dir = runner.layout.lr_sweep_run(method, runner.learning_rate)
        recorded = run_dir / FIT_CALL_FILE
        if hf_config(run_dir / HF_DIR).is_file() and recorded.is_file() and read_json(recorded) == wanted:
            return run_dir
    return None


def copy_run(source: Path, run_dir: Path) -> None:
    """Copy a finished run's files into `run_dir` (the cell's own folder), its exported model last and renamed into
    place, so the cell counts as trained only once every file is there."""
    for entry in source.iterdir():
        if entry.name == HF_DIR:
            continue
        if entry.is_dir():
            shutil.copytree(entry, run_dir / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, run_dir / entry.name)
    partial = run_dir / f"{HF_DIR}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # the kit's own half-copied export from an interrupted copy
    shutil.copytree(source / HF_DIR, partial)
    partial.rename(run_dir / HF_DIR)


def best_rate(losses: dict[str, float | None]) -> float | None:
    """The rate (as written in `losses`' keys) with the lowest final loss; None when no run ended at a finite loss
    (a diverged run's NaN never wins)."""
    finished = {rate: loss for rate, loss in losses.items() if loss is not None and math.isfinite(loss)}
    return float(min(finished, key=finished.__getitem__)) if finished else None


def sweep_record(sweep: LRSweep, losses: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    chosen = best_rate(losses[sweep.methods[0]])
    if chosen is None:
        raise SweepRunFailed("no run of the learning-rate sweep finished; see shared/lr_sweep/*/pretrain.log")
    best = {method: best_rate(per_rate) for method, per_rate in losses.items()}
    return {"rates": list(sweep.rates), "seed": sweep.seed, "loss": losses, "best": best, "chosen": chosen}
