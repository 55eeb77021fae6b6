"""Evaluation of live or exported models: lm-eval on the kit's offline task definitions (lm-eval imported lazily)
and MiniLLM's Rouge-L on the dialogue sets; no Lightning here."""

from xpert_pl.evaluation.harness import evaluate_lm, flat_metrics
from xpert_pl.evaluation.lm_tasks import LM_TASKS, STANDARD_TASKS, TASKS_DIR, LMTask, resolve_tasks, task_manager
from xpert_pl.evaluation.rouge import DIALOGUE_SETS, RougeResult, RougeSetScore, evaluate_rouge

__all__ = [
    "DIALOGUE_SETS",
    "LM_TASKS",
    "STANDARD_TASKS",
    "TASKS_DIR",
    "LMTask",
    "RougeResult",
    "RougeSetScore",
    "evaluate_lm",
    "evaluate_rouge",
    "flat_metrics",
    "resolve_tasks",
    "task_manager",
]
