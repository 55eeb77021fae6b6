"""The kit's lm-eval task definitions: names, shipped YAMLs, local data loading, and skipping tasks without data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lm_eval_rows import write_data_root

from xpert_pl.evaluation import LM_TASKS, STANDARD_TASKS, TASKS_DIR, resolve_tasks, task_manager
from xpert_pl.evaluation.harness import load_tasks
from xpert_pl.evaluation.lm_tasks import local_dataset
from xpert_pl.paths import DataRootError

MMLU_FILES = {"test": "{split}/mmlu/test.jsonl", "dev": "eval/mmlu/dev.jsonl"}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _mmlu_row(subject: str, i: int) -> dict:
    return {"subject": subject, "question": f"q{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4}


def test_unknown_or_repeated_names_fail_with_the_valid_names():
    assert [t.name for t in resolve_tasks(STANDARD_TASKS)] == ["boolq", "hellaswag", "mmlu", "piqa", "winogrande"]
    with pytest.raises(ValueError, match=r"unknown lm-eval task\(s\) \['arc'\]; valid: boolq, hellaswag, mmlu"):
        resolve_tasks(["boolq", "arc"])
    with pytest.raises(ValueError, match="more than once: \\['piqa'\\]"):
        resolve_tasks(["piqa", "piqa"])
    with pytest.raises(ValueError, match="no lm-eval tasks given; valid: "):
        resolve_tasks([])


def test_shipped_mmlu_subjects_mirror_lm_eval():
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    theirs_dir = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    theirs = sorted(theirs_dir.glob("mmlu_*.yaml"))
    assert len(theirs) == 57
    assert sorted(p.name for p in (TASKS_DIR / "mmlu").glob("mmlu_*.yaml")) == [p.name for p in theirs]
    keys = ("task", "task_alias", "tag", "description", "doc_to_text", "doc_to_choice", "doc_to_target", "metadata")
    for path in theirs:
        mine = load_yaml(TASKS_DIR / "mmlu" / path.name, resolve_func=False)
        ref = load_yaml(path, resolve_func=False)
        assert {k: mine[k] for k in keys} == {k: ref[k] for k in keys}, path.name
        assert mine["dataset_kwargs"]["subject"] == ref["dataset_name"]
        assert mine["num_fewshot"] == LM_TASKS["mmlu"].num_fewshot
    for group in ("_mmlu", "_mmlu_humanities", "_mmlu_other", "_mmlu_social_sciences", "_mmlu_stem"):
        assert load_yaml(TASKS_DIR / "mmlu" / f"{group}.yaml") == load_yaml(theirs_dir / f"{group}.yaml")


def test_local_dataset_reads_the_split_and_keeps_one_subject(tmp_path):
    _write(
        tmp_path / "eval_final/mmlu/test.jsonl", [_mmlu_row(s, i) for i, s in enumerate(["anatomy", "virology"] * 3)]
    )
    _write(tmp_path / "eval/mmlu/dev.jsonl", [_mmlu_row(s, i) for i, s in enumerate(["anatomy", "virology"] * 5)])
    data = local_dataset(MMLU_FILES, data_root=str(tmp_path), split="eval_final", subject="anatomy", version=1.0)
    assert {name: len(ds) for name, ds in data.items()} == {"test": 3, "dev": 5}
    assert data["test"]["question"] == ["q0", "q2", "q4"]
    with pytest.raises(DataRootError, match="has no rows of subject 'astronomy'"):
        local_dataset(MMLU_FILES, data_root=str(tmp_path), split="eval_final", subject="astronomy")
    with pytest.raises(DataRootError, match=r"eval/mmlu/test.jsonl does not exist"):
        local_dataset(MMLU_FILES, data_root=str(tmp_path), split="eval")


def test_every_shipped_yaml_is_indexed_and_casehold_runs_once_its_data_exist(tmp_path):
    root = write_data_root(tmp_path, ["anatomy"])
    manager = task_manager("local", root, "eval")
    mmlu = {"mmlu", "mmlu_humanities", "mmlu_other", "mmlu_social_sciences", "mmlu_stem"}
    subjects = {p.stem for p in (TASKS_DIR / "mmlu").glob("mmlu_*.yaml")}
    tags = {f"mmlu_{c}_tasks" for c in ("humanities", "other", "social_sciences", "stem")}
    assert set(manager.all_tasks) == set(LM_TASKS) | mmlu | subjects | tags

    rows = [
        {"context": f"the court held (<HOLDING>) case {i}", "endings": list("vwxyz"), "label": i % 5} for i in range(3)
    ]
    _write(root / "eval/casehold/test.jsonl", rows)
    loaded, skipped = load_tasks(manager, resolve_tasks(["casehold"]), "local")
    task = loaded["casehold"]
    assert skipped == {} and task.OUTPUT_TYPE == "multiple_choice" and len(task.eval_docs) == 3
    doc = task.eval_docs[1]
    assert task.doc_to_text(doc) == "the court held (<HOLDING>) case 1\nHolding:"
    assert task.doc_to_choice(doc) == list("vwxyz") and task.doc_to_target(doc) == 1


def test_optional_tasks_without_data_are_skipped_with_the_reason_required_ones_fail(tmp_path):
    root = write_data_root(tmp_path, ["anatomy"])
    (root / "eval/medmcqa/validation.jsonl").unlink()
    manager = task_manager("local", root, "eval")
    loaded, skipped = load_tasks(manager, resolve_tasks(["piqa", "medmcqa", "casehold"]), "local", {"piqa": 2})
    assert list(loaded) == ["piqa"] and loaded["piqa"].get_config("num_fewshot") == 2
    assert skipped["medmcqa"] == f"no data: {root.resolve()}/eval/medmcqa/validation.jsonl does not exist."
    assert skipped["casehold"].startswith(f"no data: {root.resolve()}/eval/casehold/test.jsonl does not exist. CaseH")

    (root / "eval/boolq/validation.jsonl").unlink()
    with pytest.raises(DataRootError, match=r"boolq/validation\.jsonl does not exist"):
        load_tasks(manager, resolve_tasks(["boolq"]), "local")
    with pytest.raises(ValueError, match=r"num_fewshot names tasks that are not evaluated: \['mmlu'\]"):
        load_tasks(manager, resolve_tasks(["piqa"]), "local", {"mmlu": 0})


def test_hub_source_skips_tasks_lm_eval_lacks():
    # Nothing is loaded for CaseHOLD, so no manager (and no download) is needed.
    loaded, skipped = load_tasks(None, resolve_tasks(["casehold"]), "hub")
    assert loaded == {} and skipped["casehold"].startswith("no lm-eval task for source='hub'. CaseHOLD could not")


def test_bad_source_split_or_data_root_fail(tmp_path):
    with pytest.raises(ValueError, match="source must be 'local' or 'hub'"):
        task_manager("disk", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        task_manager("local", tmp_path, "test")
    with pytest.raises(DataRootError, match="data root not found"):
        task_manager("local", tmp_path / "missing")
