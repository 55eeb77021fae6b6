"""Evaluation as a pipeline step: lm-eval and Rouge-L (MiniLLM protocol) on an exported Hugging Face model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of one model.

    Attributes:
        lm_eval: lm-eval's summary per task (None when not run).
        rouge: Rouge-L per dialogue set and overall, as `RougeResult.metrics()` (None when not run).
    """

    lm_eval: dict[str, Any] | None = None
    rouge: dict[str, float] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def evaluate(
    model_dir: str | Path,
    tasks: Sequence[str] = (),
    rouge_sets: Sequence[str] | None = (),
    split: str = "eval",
    limit: int | None = None,
    rouge_seeds: Sequence[int] | None = None,
    data_root: str | Path | None = None,
    seed: int = 0,
) -> EvaluationResult:
    """Evaluate the model saved at `model_dir` (its tokenizer beside it): lm-eval on `tasks`, Rouge-L on
    `rouge_sets` (None: the five dialogue sets; empty: no Rouge-L).

    Args:
        model_dir: a Hugging Face model directory (e.g. a run's `hf/` export).
        tasks: lm-eval task names (`xpert_pl.evaluation.LM_TASKS`); empty: no lm-eval.
        rouge_sets: dialogue sets for Rouge-L; None: the default five; empty: none.
        split: "eval" while developing, "eval_final" for a report's final numbers.
        limit: the first N documents / prompts of each task or set.
        rouge_seeds: sampling seeds of Rouge-L (None: MiniLLM's).
        data_root: the data root (None: $XPERT_DATA_ROOT, else ../shared/data).
        seed: lm-eval's seed.
    """
    from transformers import AutoTokenizer

    from xpert_pl.evaluation.harness import evaluate_lm
    from xpert_pl.evaluation.rouge import evaluate_rouge
    from xpert_pl.models import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir), AutoTokenizer.from_pretrained(str(model_dir))
    lm = None
    if tasks:
        lm = evaluate_lm(model, tokenizer, tasks, limit=limit, split=split, data_root=data_root, seed=seed)
    rouge = None
    if rouge_sets is None or rouge_sets:
        result = evaluate_rouge(
            model, tokenizer, rouge_sets, split=split, data_root=data_root, limit=limit, seeds=rouge_seeds
        )
        rouge = result.metrics
    return EvaluationResult(lm, rouge, {"model_dir": str(model_dir), "split": split, "limit": limit})
