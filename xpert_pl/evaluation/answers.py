"""What a multiple-choice model answers: the share of each option among the gold answers and among the model's
picks, from lm-eval's logged samples, so a report can tell a score that is only a constant answer (a model that
answers "A" to every MMLU question scores the share of "A" answers)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# The metrics whose pick the shares are given for, as lm-eval's multiple-choice scoring defines them.
PICKS = ("acc", "acc_norm")


def answer_shares(tasks: Iterable[tuple[Any, Sequence[dict[str, Any]]]]) -> dict[str, list[float]] | None:
    """Over the documents of `tasks` (pairs of an lm-eval Task and its logged samples): `labels`, the share of
    documents whose gold answer is option k, and for `acc` (highest log-likelihood) and `acc_norm` (highest per
    character) the share whose pick is option k. None unless every task is multiple-choice with one gold index and
    the same number of options (a constant answer is otherwise undefined)."""
    picks: dict[str, list[int]] = {"labels": [], **{metric: [] for metric in PICKS}}
    options: set[int] = set()
    for task, samples in tasks:
        if getattr(task, "OUTPUT_TYPE", None) != "multiple_choice":
            return None
        for sample in samples:
            doc_picks = _picks(task, sample)
            if doc_picks is None:
                return None
            options.add(doc_picks.pop("options"))
            for key, value in doc_picks.items():
                picks[key].append(value)
    if len(options) != 1 or not picks["labels"]:
        return None
    n = options.pop()
    return {key: [values.count(k) / len(values) for k in range(n)] for key, values in picks.items()}


def _picks(task: Any, sample: dict[str, Any]) -> dict[str, int] | None:
    """One document's option count, gold index and picks (as lm-eval's `Task.process_results` computes them)."""
    doc = sample["doc"]
    choices = task.doc_to_choice(doc)
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else None
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        return None
    lls = np.array([float(resp[0]) for resp in sample["filtered_resps"]][: len(choices)])
    lengths = np.array([float(len(choice)) for choice in choices])
    return {
        "options": len(choices),
        "labels": gold,
        "acc": int(np.argmax(lls)),
        "acc_norm": int(np.argmax(lls / lengths)),
    }
