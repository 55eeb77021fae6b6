"""Dolly: MiniLLM's seeded split protocol (a pure function) and the local train/dev/DollyEval files."""

from __future__ import annotations

import pytest
import torch

from xpert_pl.data import DollyInstructions, InstructionExample, SFTDataModule, minillm_dolly_split


def test_minillm_split_sizes_are_exact_and_disjoint():
    rows = [f"row{i}" for i in range(15011)]  # the size of databricks-dolly-15k
    parts = minillm_dolly_split(rows)
    assert {k: len(v) for k, v in parts.items()} == {"train": 13511, "validation": 1000, "test": 500}
    assert sorted(parts["train"] + parts["validation"] + parts["test"]) == sorted(rows)
    for part in parts.values():  # each split keeps the original order
        assert part == sorted(part, key=lambda r: int(r[3:]))


def test_minillm_split_is_a_function_of_the_seed():
    rows = list(range(100))
    first = minillm_dolly_split(rows, seed=42, n_validation=10, n_test=5)
    assert first == minillm_dolly_split(rows, seed=42, n_validation=10, n_test=5)
    assert first["test"] != minillm_dolly_split(rows, seed=7, n_validation=10, n_test=5)["test"]
    # the fixed seed fixes the rows: a torch.randperm(100) under seed 42 puts these first
    assert first["test"] == sorted(torch.randperm(100, generator=torch.Generator().manual_seed(42))[:5].tolist())
    with pytest.raises(ValueError, match="cannot hold out"):
        minillm_dolly_split(rows, n_validation=90, n_test=20)


def test_local_dolly_files_give_train_dev_and_dollyeval(tmp_path, write_jsonl, tiny_tokenizer):
    write_jsonl(
        tmp_path / "sft/dolly/train.jsonl",
        [
            {"instruction": f"Q{i}?", "context": "c" if i % 2 else "", "response": f"A{i}.", "category": None}
            for i in range(6)
        ],
    )
    write_jsonl(
        tmp_path / "sft/dolly/dev.jsonl", [{"instruction": "D?", "context": "", "response": "d", "category": "qa"}]
    )
    eval_row = {"instruction": "E?", "input": "x", "output": "e", "prompt": "...", "topic": "qa"}
    write_jsonl(tmp_path / "eval/dollyeval/test.jsonl", [eval_row])
    source = DollyInstructions()
    assert source.validation_names == ["dolly_dev"] and source.test_names == ["dollyeval"]
    splits = source.load(str(tmp_path))
    assert splits.train[1] == InstructionExample("Q1?", "c", "A1.") and len(splits.train) == 6
    assert splits.validation == {"dolly_dev": [InstructionExample("D?", "", "d")]}
    assert splits.test == {"dollyeval": [InstructionExample("E?", "x", "e")]}
    assert DollyInstructions(test=None).test_names == []
    dm = SFTDataModule(tokenizer=str(tiny_tokenizer), data_root=str(tmp_path), max_length=256)
    assert isinstance(dm.source, DollyInstructions)  # the default source
    assert dm.domain_names == ["dolly_dev"] and dm.test_names == ["dollyeval"]
    dm.setup("test")
    assert dm.stats["dollyeval"]["kept"] == 1 and len(dm.test_dataloader()) == 1
