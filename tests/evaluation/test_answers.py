"""answer_shares: what a multiple-choice model picks, so a constant answer is told apart from a skill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lm_eval_rows import write_data_root

from xpert_pl.evaluation import TASKS_DIR, evaluate_lm
from xpert_pl.evaluation.answers import answer_shares
from xpert_pl.models import DenseStudent
from xpert_pl.tokenizer import load_tokenizer


class _Task:
    """The parts of an lm-eval Task that answer_shares reads."""

    OUTPUT_TYPE = "multiple_choice"
    multiple_input = False

    def __init__(self, options: int = 2):
        self.options = options

    def doc_to_choice(self, doc):
        return ["a" * (k + 1) for k in range(self.options)]

    def doc_to_target(self, doc):
        return doc["gold"]


def _sample(gold: int, lls: list[float]) -> dict:
    return {"doc": {"gold": gold}, "filtered_resps": [(ll, False) for ll in lls]}


def test_shares_of_gold_answers_and_of_raw_and_per_character_picks():
    # options "a" and "aa": per character, -1.5 over 2 characters beats -1.0 over 1
    samples = [_sample(0, [-1.0, -1.5]), _sample(1, [-1.0, -3.0]), _sample(1, [-2.0, -1.0]), _sample(1, [-1, -5])]
    shares = answer_shares([(_Task(), samples)])
    assert shares == {"labels": [0.25, 0.75], "acc": [0.75, 0.25], "acc_norm": [0.5, 0.5]}


def test_undefined_constant_answer_gives_none():
    generate = _Task()
    generate.OUTPUT_TYPE = "generate_until"
    assert answer_shares([(generate, [_sample(0, [0.0, 0.0])])]) is None
    assert answer_shares([(_Task(2), [_sample(0, [0.0, 0.0])]), (_Task(3), [_sample(0, [0.0, 0.0, 0.0])])]) is None
    assert answer_shares([(_Task(), [_sample(5, [0.0, 0.0])])]) is None  # gold out of range
    assert answer_shares([(_Task(), [])]) is None


def test_a_model_that_always_answers_yes_scores_the_share_of_yes(tmp_path, tiny_tokenizer_dir):
    """End to end through lm-eval: a model whose head is pushed towards " yes" picks it for every BoolQ document,
    and its accuracy is then exactly the share of gold "yes" answers, which the summary's `answers` records."""
    subjects = sorted(p.stem.removeprefix("mmlu_") for p in (TASKS_DIR / "mmlu").glob("mmlu_*.yaml"))
    root = write_data_root(tmp_path, subjects)
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    overrides = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}
    model = DenseStudent("llama-tiny", overrides).build(len(tokenizer))
    pieces = {word: set(tokenizer.encode(f" {word}", add_special_tokens=False)) for word in ("yes", "no")}
    yes = pieces["yes"] - pieces["no"]
    assert yes

    def push_to_yes(module, inputs, output):
        output[..., sorted(yes)] += 100.0
        return output

    model.lm_head.register_forward_hook(push_to_yes)
    entry = evaluate_lm(model, tokenizer, tasks=["boolq"], limit=20, batch_size=4, data_root=root)["tasks"]["boolq"]

    rows = [json.loads(line) for line in Path(root / "eval" / "boolq" / "validation.jsonl").read_text().splitlines()]
    yes_share = sum(row["label"] == 1 for row in rows[:20]) / 20
    assert 0.0 < yes_share < 1.0
    assert entry["answers"]["labels"] == pytest.approx([1 - yes_share, yes_share])
    assert entry["answers"]["acc"] == [0.0, 1.0]
    assert entry["metrics"]["acc"] == pytest.approx(yes_share)
