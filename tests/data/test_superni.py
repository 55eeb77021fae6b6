"""SuperNI: official task lists and task files, per-task cap and validation hold-out, MMLU exclusion, Hub rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xpert_pl.data import InstructionExample, SFTDataModule, SuperNIInstructions
from xpert_pl.data.superni import index_task_files, is_mmlu_task, read_task_list, tasks_from_hub_rows

MMLU = "task700_mmmlu_answer_generation_anatomy"


def _task(name: str, n: int, definition: str) -> dict:
    return {
        "Definition": [definition],
        "Positive Examples": [{"input": "ex", "output": "ex out", "explanation": "why"}],
        "Instances": [
            {"id": f"{name}-{i}", "input": f"{name} input {i}", "output": [f"out {i}", "alt"]} for i in range(n)
        ],
    }


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


@pytest.fixture
def superni_root(tmp_path: Path) -> Path:
    """sft/superni with 3 listed train tasks (one without a file, one MMLU) and 2 test tasks (one a subset)."""
    base = tmp_path / "sft" / "superni"
    _write(base / "splits/default/train_tasks.txt", f"task001_summary\n{MMLU}\ntask002_missing\n\n")
    _write(base / "splits/default/test_tasks.txt", "task900_title\ntask901_copa\n")
    _write(base / "tasks/train/task001_summary.json", _task("task001", 30, "Summarize the text. "))
    _write(base / f"tasks/train/{MMLU}.json", _task("task700", 12, "Answer the question."))
    _write(base / "tasks/test/testset_task900_title.json", _task("task900", 8, "Write a title."))
    _write(base / "tasks/test/task901_copa.json", _task("task901", 4, "Pick A or B."))
    return tmp_path


def test_task_lists_and_files(superni_root):
    base = superni_root / "sft" / "superni"
    assert read_task_list(base / "splits/default/train_tasks.txt") == ["task001_summary", MMLU, "task002_missing"]
    index = index_task_files(base / "tasks")
    assert sorted(index) == ["task001_summary", MMLU, "task900_title", "task901_copa"]
    assert index["task900_title"].name == "testset_task900_title.json"
    assert is_mmlu_task(MMLU) and not is_mmlu_task("task001_summary")


def test_full_file_wins_over_a_testset_subset(tmp_path):
    _write(tmp_path / "tasks/a/testset_task5_x.json", "{}")
    _write(tmp_path / "tasks/b/task5_x.json", "{}")
    assert index_task_files(tmp_path / "tasks")["task5_x"].name == "task5_x.json"


def test_cap_validation_hold_out_and_test_instances(superni_root):
    source = SuperNIInstructions(max_per_task=10, val_per_task=3, test_max_per_task=5)
    splits = source.load(str(superni_root))
    report = source.report()
    assert report["train_tasks"] == {"listed": 3, "missing": 1, "mmlu": 1, "excluded_mmlu": 0, "used": 2}
    assert report["test_tasks"] == {"listed": 2, "missing": 0, "mmlu": 0, "excluded_mmlu": 0, "used": 2}
    assert report["examples"] == {"train": 19, "superni_val": 6, "superni_test": 9}  # 10+(12-3), 3+3, 5+4
    train, val = splits.train, splits.validation["superni_val"]
    assert len({e.input for e in train + val}) == 25  # held-out instances never train
    assert train[0].instruction == "Summarize the text." and train[0].response.startswith("out ")
    assert {e.instruction for e in train} == {"Summarize the text.", "Answer the question."}
    test = splits.test["superni_test"]
    assert test[0] == InstructionExample("Write a title.", "task900 input 0", "out 0")  # first N, in file order
    assert [e.input for e in test[5:]] == [f"task901 input {i}" for i in range(4)]


def test_instance_sampling_is_seeded_per_task(superni_root):
    def train_inputs(seed: int, **kw) -> list[str]:
        return [e.input for e in SuperNIInstructions(max_per_task=5, seed=seed, **kw).load(str(superni_root)).train]

    assert train_inputs(0) == train_inputs(0)
    assert train_inputs(0) != train_inputs(1)
    # a task's sample does not depend on which other tasks are in the run
    assert train_inputs(0, exclude_mmlu=True) == [x for x in train_inputs(0) if x.startswith("task001")]


def test_exclude_mmlu_drops_mmlu_derived_tasks(superni_root):
    source = SuperNIInstructions(exclude_mmlu=True)
    splits = source.load(str(superni_root))
    assert source.report()["train_tasks"]["excluded_mmlu"] == 1
    assert all(e.instruction == "Summarize the text." for e in splits.train + splits.validation["superni_val"])
    assert len(splits.train) == 25  # 30 - 5 held out, under the default cap of 100


def test_no_train_task_left_is_an_error(superni_root):
    _write(superni_root / "sft/superni/splits/default/train_tasks.txt", f"{MMLU}\n")
    with pytest.raises(ValueError, match="no train task left"):
        SuperNIInstructions(exclude_mmlu=True).load(str(superni_root))


def test_data_module_over_superni(superni_root, tiny_tokenizer):
    source = SuperNIInstructions(exclude_mmlu=True, max_per_task=8, val_per_task=2)
    dm = SFTDataModule(source, tokenizer=str(tiny_tokenizer), data_root=str(superni_root), max_length=256)
    assert dm.domain_names == ["superni_val"] and dm.test_names == ["superni_test"]
    dm.setup("fit")
    assert dm.stats["train"]["kept"] == 8 and dm.stats["superni_val"]["kept"] == 2
    assert dm.stats["source"]["train_tasks"]["used"] == 1


def test_hub_rows_are_grouped_into_task_files():
    rows = [
        {"task_name": "task1_a", "id": "1", "definition": "Do a.", "inputs": "x", "targets": "y"},
        {"task_name": "task2_b", "id": "2", "definition": "Do b.", "inputs": "p", "targets": "q"},
        {"task_name": "task1_a", "id": "3", "definition": "Do a.", "inputs": "z", "targets": "w"},
    ]
    tasks = tasks_from_hub_rows(rows)
    assert tasks["task1_a"] == {
        "Definition": ["Do a."],
        "Instances": [{"id": "1", "input": "x", "output": ["y"]}, {"id": "3", "input": "z", "output": ["w"]}],
    }
    assert list(tasks) == ["task1_a", "task2_b"]
