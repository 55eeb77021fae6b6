"""The learning-rate sweep of a matrix: the swept methods at every rate (one seed, the headline scale, the largest
budget) before the cells; scratch's best rate becomes every cell's learning rate, so no initialisation can win by
compensating a mis-set rate, and XPERT's own best rate is reported beside it."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from xpert_pl.artifacts import write_json
from xpert_pl.experiments.matrix import Cell, LRSweep
from xpert_pl.layout import HF_DIR, METRICS_FILE, hf_config
from xpert_pl.pipeline.config import merge

# The runner is passed in (typed `Any`): it imports this module when a matrix has a sweep, and a type import the
# other way would make the two modules a cycle.
MatrixRunner = Any

log = logging.getLogger(__name__)


def sweep_cell(runner: MatrixRunner, sweep: LRSweep, method: str) -> Cell:
    """The cell whose settings a sweep run of `method` uses (before its learning rate is set)."""
    matrix = runner.matrix
    scale = sweep.scale or next(iter(matrix.scales))
    return Cell(scale, matrix.largest_budget, method, sweep.seed, matrix.budgets[matrix.largest_budget])


def run_lr_sweep(runner: MatrixRunner, sweep: LRSweep) -> dict[str, Any]:
    """Train (or reuse) every (method, rate) run, write the sweep's record and return it (`chosen`: the rate)."""
    from xpert_pl.pipeline.training import last_validation

    losses: dict[str, dict[str, float | None]] = {}
    for method in sweep.methods:
        losses[method] = {}
        for rate in sweep.rates:
            run_dir = runner.layout.lr_sweep_run(method, rate)
            if not hf_config(run_dir / HF_DIR).is_file():
                call = runner.pretrain_call(sweep_cell(runner, sweep, method))
                last = run_dir / "checkpoints" / "last.ckpt"
                config = merge(call.config, {"model": {"learning_rate": rate}})
                resume = last.is_file()
                call = dataclasses.replace(call, config=config, run_dir=run_dir, resume=resume, overwrite=not resume)
                status = runner.launch(call, run_dir / "pretrain.log")
                log.info("[bench] lr sweep %s at %g: exit status %d", method, rate, status)
            losses[method][f"{rate:g}"] = last_validation(run_dir / METRICS_FILE).get("val/loss")
    record = sweep_record(sweep, losses)
    write_json(runner.layout.lr_sweep, record)
    return record


def best_rate(losses: dict[str, float | None]) -> float | None:
    """The rate (as written in `losses`' keys) with the lowest final loss; None when no run finished."""
    finished = {rate: loss for rate, loss in losses.items() if loss is not None}
    return float(min(finished, key=finished.__getitem__)) if finished else None


def sweep_record(sweep: LRSweep, losses: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    chosen = best_rate(losses[sweep.methods[0]])
    if chosen is None:
        raise RuntimeError("no run of the learning-rate sweep finished; see shared/lr_sweep/*/pretrain.log")
    best = {method: best_rate(per_rate) for method, per_rate in losses.items()}
    return {"rates": list(sweep.rates), "seed": sweep.seed, "loss": losses, "best": best, "chosen": chosen}
