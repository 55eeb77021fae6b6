"""One run per run folder: a new `xpert fit` into a folder that holds a run is refused unless it resumes or the
user asks to overwrite, and a lock keeps two writers out of one folder."""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

from xpert_pl.errors import ConfigError
from xpert_pl.layout import METRICS_FILE

log = logging.getLogger(__name__)

LOCK_FILE = ".xpert-fit.lock"
# The metrics of a resumed run's earlier part, kept while Lightning's CSVLogger replaces metrics.csv on start.
HISTORY_FILE = ".metrics-before-resume.csv"
REPLACED_PREFIX = ".replaced-"
# What `xpert fit` writes into its run folder: the marks of a run.
RUN_ENTRIES = (
    METRICS_FILE,
    "config.yaml",
    "hparams.yaml",
    "checkpoints",
    "hf",
    "init_report.json",
    "objective.json",
    "lm_eval",
    "generations",
    "validate",  # xpert validate/test of the run's checkpoints (xpert_pl.training.lightning_cli)
    "test",
)


def run_entries(run_dir: Path) -> list[str]:
    """The entries of a run that `run_dir` holds."""
    return [name for name in RUN_ENTRIES if (run_dir / name).exists()]


class RunFolder(L.Callback):
    """The run folder of one `xpert fit`: guarded, locked while the run writes, and (with overwrite) the older
    run's files moved aside until the new run is complete, so a failed new run loses nothing.

    As a callback of the run's trainer it lets the lock go when the run fails (a process that goes on, e.g. a
    notebook, must be able to fit into the folder again).
    """

    def __init__(self, run_dir: str | Path, resume: bool, overwrite: bool):
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        self._lock = None
        self._replaced: Path | None = None

    def problems(self) -> list[str]:
        """Why a fit may not write here (checked before anything is loaded or tokenised)."""
        from xpert_pl.artifacts import writable_problem

        problem = writable_problem(self.run_dir, "run folder (trainer.logger.init_args.save_dir)")
        if problem is not None:
            return [problem]
        existing = run_entries(self.run_dir)
        if existing and not self.resume and not self.overwrite:
            return [
                f"run folder '{self.run_dir}' already holds a run ({', '.join(existing)}): a new fit would mix with "
                "or replace it. Resume it with --ckpt_path last, write elsewhere with "
                "--trainer.logger.init_args.save_dir=<new folder>, or replace it with --overwrite true"
            ]
        return []

    def acquire(self) -> None:
        """Take the folder's lock (refused at once if another fit holds it); with overwrite, set the old run aside."""
        from filelock import FileLock, Timeout

        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.run_dir / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(
                [f"another xpert fit is writing into '{self.run_dir}' (it holds {LOCK_FILE}); wait for it to end"]
            ) from None
        self._lock = lock
        if self.overwrite and not self.resume and run_entries(self.run_dir):
            self._set_aside()
        if self.resume:
            self._keep_history()

    def _keep_history(self) -> None:
        """Copy metrics.csv aside before the CSVLogger deletes it (kept from an earlier attempt that died first)."""
        metrics, history = self.run_dir / METRICS_FILE, self.run_dir / HISTORY_FILE
        if metrics.is_file() and not history.is_file():
            shutil.copy2(metrics, history)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """A resumed run's metrics.csv starts with the earlier part's rows (those before the checkpoint's step).

        Here, as the checkpoint is restored, not at train start: a run resumed at its last step skips the train loop
        and its hooks, and its history would be lost."""
        history = self.run_dir / HISTORY_FILE
        writer = _csv_writer(trainer)
        if not self.resume or not history.is_file() or writer is None:
            return
        step = int(checkpoint.get("global_step", 0))
        with history.open(newline="") as fh:
            rows = [_typed(row) for row in csv.DictReader(fh) if int(row["step"]) < step]
        writer.metrics[:0] = rows
        writer.save()
        history.unlink()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # metrics.csv holds every row up to a checkpoint, so a run killed after it resumes with its whole history.
        writer = _csv_writer(trainer)
        if writer is not None:
            writer.save()

    def _set_aside(self) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self._replaced = Path(tempfile.mkdtemp(prefix=f"{REPLACED_PREFIX}{stamp}-", dir=self.run_dir))
        for name in run_entries(self.run_dir):
            (self.run_dir / name).rename(self._replaced / name)
        log.info("--overwrite: the earlier run is kept in %s until this one completes", self._replaced)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.release(completed=False)

    def release(self, completed: bool) -> None:
        """Drop the lock; once the new run completed, remove the runs it replaced (earlier failed attempts'
        set-asides too: the user asked for them to be replaced, and now they are)."""
        if completed and self.overwrite:
            for replaced in self.run_dir.glob(f"{REPLACED_PREFIX}*"):
                shutil.rmtree(replaced, ignore_errors=True)
        elif self._replaced is not None:
            log.warning("the run this one was to replace is kept in %s", self._replaced)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            (self.run_dir / LOCK_FILE).unlink(missing_ok=True)


def _csv_writer(trainer: L.Trainer) -> Any:
    """The rank-zero CSVLogger's writer of this run (None for another logger or on another rank)."""
    from lightning.pytorch.loggers import CSVLogger

    logger = trainer.logger
    if not trainer.is_global_zero or not isinstance(logger, CSVLogger):
        return None
    return logger.experiment


def _typed(row: dict[str, str]) -> dict[str, float | int]:
    """A metrics.csv row as the logger holds it: numbers, without the empty cells."""
    return {k: int(v) if k in ("epoch", "step") else float(v) for k, v in row.items() if v not in ("", None)}
