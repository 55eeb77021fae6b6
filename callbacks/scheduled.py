"""When an evaluation callback runs: after every N-th validation, or once when training ends."""

from __future__ import annotations

import abc
import logging
from typing import Any, Literal

import lightning as L

from xpert_pl.errors import ConfigError
from xpert_pl.paths import path_component_problem

When = Literal["validation", "fit_end"]

log = logging.getLogger(__name__)


class ScheduledEvaluation(L.Callback, abc.ABC):
    """Calls `_run` after every `every_n_validations`-th validation (`when="validation"`, sanity checks excluded)
    or once at the end of training (`when="fit_end"`), logs what it returns, and checkpoints its count."""

    def __init__(self, when: When, every_n_validations: int, dirname: str):
        if when not in ("validation", "fit_end"):
            raise ValueError(f"when must be 'validation' or 'fit_end', got '{when}'")
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.when = when
        self.every_n_validations = every_n_validations
        if (problem := path_component_problem(dirname, "dirname")) is not None:
            raise ConfigError([f"{type(self).__name__}: {problem}"])
        self.dirname = dirname
        self._validations = 0
        self._resumed_at_step: int | None = None  # set when a run resumes at its last step
        self._evaluated_at_end = False

    @abc.abstractmethod
    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Evaluate; every rank must call it (collectives inside) and receives the same metrics."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.when != "validation" or trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_validations:
            return
        metrics = self._run(trainer, pl_module)
        pl_module.log_dict(metrics, add_dataloader_idx=False)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        step = int(checkpoint.get("global_step", 0))
        if self.when == "fit_end" and trainer.max_steps > 0 and step >= trainer.max_steps:
            self._resumed_at_step = step  # the checkpoint was saved before this run's fit-end evaluation

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed at its last step skips the train loop and on_train_end: its fit-end evaluation runs here.
        if self._resumed_at_step is not None:
            self._evaluate_at_end(trainer, pl_module)
            self._resumed_at_step = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_fit_end: Lightning has moved the model to the CPU by then.
        if self.when == "fit_end":
            self._evaluate_at_end(trainer, pl_module)

    def global_step(self, trainer: L.Trainer) -> int:
        """The step the evaluated weights are at (at fit start a resumed run's step is not restored yet)."""
        return trainer.global_step if self._resumed_at_step is None else self._resumed_at_step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.when == "fit_end" and not self._evaluated_at_end:
            log.warning(
                "%s: the fit-end evaluation did not run (the run resumed at its last step, and its strategy restores "
                "the checkpoint only after fit start); evaluate the exported model instead",
                type(self).__name__,
            )

    def _evaluate_at_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = self._run(trainer, pl_module)
        self._evaluated_at_end = True
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=self.global_step(trainer))
                logger.save()

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))
