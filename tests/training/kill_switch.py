"""Callbacks that kill, interrupt or fail their own run after a given optimizer step (resume and safety tests)."""

from __future__ import annotations

import os
import signal

import lightning as L

from xpert_pl.callbacks.scheduled import ScheduledEvaluation


class KillAtStep(L.Callback):
    """Kill the process with SIGKILL (no cleanup, no final checkpoint) once `step` optimizer steps are done."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class InterruptAtStep(L.Callback):
    """Interrupt the run once `step` optimizer steps are done: Ctrl-C (`keyboard`) or a SIGTERM to itself."""

    def __init__(self, step: int, how: str = "keyboard"):
        self.step = step
        self.how = how

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.global_step < self.step:
            return
        if self.how == "keyboard":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)


class FailAtStep(L.Callback):
    """Raise an error (a bug, not an interrupt) once `step` optimizer steps are done."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError("injected failure")


class CountedEndEvaluation(ScheduledEvaluation):
    """A fit-end evaluation that logs `eval/end` and appends the step it ran at to `record` (resume tests)."""

    def __init__(self, record: str):
        super().__init__("fit_end", 1, "end_eval")
        self.record = record

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        with open(self.record, "a") as fh:
            fh.write(f"{self.global_step(trainer)}\n")
        return {"eval/end": 1.0}
