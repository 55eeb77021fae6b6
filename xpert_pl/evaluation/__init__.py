"""Evaluation of live models with lm-eval on the kit's offline task definitions (imports lm-eval lazily)."""

from xpert_pl.evaluation.harness import evaluate_lm, flat_metrics
from xpert_pl.evaluation.lm_tasks import LM_TASKS, STANDARD_TASKS, TASKS_DIR, LMTask, resolve_tasks, task_manager

__all__ = [
    "LM_TASKS",
    "STANDARD_TASKS",
    "TASKS_DIR",
    "LMTask",
    "evaluate_lm",
    "flat_metrics",
    "resolve_tasks",
    "task_manager",
]
