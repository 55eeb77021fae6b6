"""Synthetic rows for the lm-eval tasks: in the Hugging Face schemas lm-eval's own tasks read ("raw"), and the
same rows converted to the data root's jsonl schemas ("local") the way the data README describes them."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

WORDS = ("the", "court", "said", "a", "party", "shall", "pay", "contract", "market", "city", "police", "week", "vote")
MMLU_SUBJECTS = ("abstract_algebra", "anatomy")  # with test rows; the other subjects get one row each


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def raw_rows(n: int = 24, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """n rows per task in lm-eval's (hub) schema; HellaSwag rows carry WikiHow-style bracket artifacts."""
    rng = random.Random(seed)
    s = _sentence
    rows: dict[str, list[dict[str, Any]]] = {
        "boolq": [{"passage": s(rng, 12), "question": s(rng, 5), "label": rng.randint(0, 1)} for _ in range(n)],
        "piqa": [
            {"goal": s(rng, 6), "sol1": s(rng, 5), "sol2": s(rng, 4), "label": rng.randint(0, 1)} for _ in range(n)
        ],
        "winogrande": [
            {
                "sentence": f"{s(rng, 4)} _ {s(rng, 5)}.",
                "option1": "court",
                "option2": "party",
                "answer": str(i % 2 + 1),
            }
            for i in range(n)
        ],
        "hellaswag": [
            {
                "activity_label": "Report",
                "ctx_a": f"{s(rng, 5)} [title] {s(rng, 3)}.",
                "ctx_b": s(rng, 3),
                "endings": [f"{s(rng, 4)} [step]  {s(rng, 2)}." for _ in range(4)],
                "label": str(rng.randint(0, 3)),
            }
            for _ in range(n)
        ],
        "medmcqa": [
            {"question": s(rng, 7), **{f"op{c}": s(rng, 3) for c in "abcd"}, "cop": rng.randint(0, 3)} for _ in range(n)
        ],
    }
    return rows


def mmlu_rows(subjects: list[str], n: int = 24, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(test, dev) rows in cais/mmlu's schema: n test rows for MMLU_SUBJECTS, 1 for the others, 5 dev each."""
    rng = random.Random(seed)

    def row(subject: str) -> dict[str, Any]:
        choices = [rng.choice(WORDS) for _ in range(4)]  # short: six questions must fit the tiny model's context
        return {"subject": subject, "question": _sentence(rng, 3), "choices": choices, "answer": rng.randint(0, 3)}

    test = [row(sub) for sub in subjects for _ in range(n if sub in MMLU_SUBJECTS else 1)]
    dev = [row(sub) for sub in subjects for _ in range(5)]
    return test, dev


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def to_local(task: str, row: dict[str, Any]) -> dict[str, Any]:
    """A raw row in the data root's schema (HellaSwag: joined, cleaned query; MedMCQA: lettered choices)."""
    if task == "hellaswag":
        query = _hellaswag_clean(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
        return {"query": query, "endings": row["endings"], "label": int(row["label"])}
    if task == "medmcqa":
        choices = [f"{letter}. {row['op' + c]}" for letter, c in zip("ABCD", "abcd", strict=True)]
        return {"question": row["question"], "choices": choices, "answer": row["cop"]}
    return dict(row)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_data_root(root: Path, subjects: list[str], n: int = 24) -> Path:
    """`<root>/eval/<task>/...jsonl` in the local schemas (no CaseHOLD, as in the real data root)."""
    for task, rows in raw_rows(n).items():
        _write(root / "eval" / task / "validation.jsonl", [to_local(task, r) for r in rows])
    test, dev = mmlu_rows(subjects, n)
    _write(root / "eval" / "mmlu" / "test.jsonl", test)
    _write(root / "eval" / "mmlu" / "dev.jsonl", dev)
    return root
