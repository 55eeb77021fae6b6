"""When an evaluation callback runs: after every N-th validation, or once when training ends."""

from __future__ import annotations

import abc
from typing import Any, Literal

import lightning as L

from xpert_pl.errors import ConfigError
from xpert_pl.paths import path_component_problem

When = Literal["validation", "fit_end"]


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

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_fit_end: Lightning has moved the model to the CPU by then.
        if self.when != "fit_end":
            return
        metrics = self._run(trainer, pl_module)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))
