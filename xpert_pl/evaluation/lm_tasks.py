"""The kit's lm-eval tasks: which exist, how they map to lm-eval's built-in tasks, and what their YAMLs call.

The YAMLs under `tasks/` mirror lm-eval's standard task configs (prompt, choices, target, metrics, few-shot split,
version) but read the local jsonl files of the data root through `local_dataset`, so they run offline. The data
root and the split reach `local_dataset` as task metadata, which is what `task_manager` sets; from the command
line the same YAMLs run as
`lm_eval --include_path <xpert_pl>/evaluation/tasks --metadata '{"split": "eval"}' --tasks boolq,mmlu ...`
(data root from `data_root` in the metadata, else $XPERT_DATA_ROOT). `source="hub"` uses lm-eval's own built-in
tasks instead (they download their data: online only).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from xpert_pl.paths import DataRootError
from xpert_pl.paths import data_root as resolve_data_root

if TYPE_CHECKING:
    import datasets
    from lm_eval.tasks import TaskManager

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
Source = Literal["local", "hub"]
Split = Literal["eval", "eval_final"]
SPLITS: tuple[str, ...] = ("eval", "eval_final")


@dataclass(frozen=True)
class LMTask:
    """A task the kit reports: its local (shipped YAML) and lm-eval hub names, headline metric and shots."""

    name: str
    hub_name: str | None
    metric: str
    num_fewshot: int = 0
    optional: bool = False
    note: str = ""
    choices: int | None = None
    """Answer options per question: chance accuracy is 1/choices (the report flags scores within 2 standard
    errors of it as no signal)."""


LM_TASKS: dict[str, LMTask] = {
    task.name: task
    for task in (
        LMTask("boolq", "boolq", "acc", choices=2),
        LMTask("hellaswag", "hellaswag", "acc_norm", choices=4),
        LMTask("mmlu", "mmlu", "acc", num_fewshot=5, choices=4),
        LMTask("piqa", "piqa", "acc", choices=2),
        LMTask("winogrande", "winogrande", "acc", choices=2),
        # Optional: evaluated where their data exist, reported as skipped (with the reason) where not.
        LMTask("medmcqa", "medmcqa", "acc", optional=True, choices=4),
        LMTask(
            "casehold",
            None,
            "acc",
            optional=True,
            choices=5,
            note="CaseHOLD could not be obtained for the offline data root (see its README) and lm-eval has no "
            "CaseHOLD task; put rows {context, endings[5], label} at <data_root>/<split>/casehold/test.jsonl",
        ),
    )
}
STANDARD_TASKS: tuple[str, ...] = ("boolq", "hellaswag", "mmlu", "piqa", "winogrande")


def resolve_tasks(names: Sequence[str]) -> list[LMTask]:
    """The tasks named, in order.

    Raises:
        ValueError: an unknown or repeated name, or none at all; the message lists the valid names.
    """
    unknown = [name for name in names if name not in LM_TASKS]
    if unknown or not names:
        what = f"unknown lm-eval task(s) {unknown}" if unknown else "no lm-eval tasks given"
        raise ValueError(f"{what}; valid: {', '.join(LM_TASKS)}")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise ValueError(f"lm-eval task(s) named more than once: {repeated}")
    return [LM_TASKS[name] for name in names]


def task_manager(source: Source = "local", data_root: str | Path | None = None, split: Split = "eval") -> TaskManager:
    """An lm-eval TaskManager over the shipped YAMLs (only those) reading `<data_root>/<split>`, or lm-eval's own.

    Raises:
        DataRootError: `source="local"` and the data root does not exist.
    """
    from lm_eval.tasks import TaskManager

    if source == "hub":
        return TaskManager()
    if source != "local":
        raise ValueError(f"source must be 'local' or 'hub', got {source!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    metadata = {"data_root": str(resolve_data_root(data_root)), "split": split}
    # include_defaults=False: only the kit's tasks are indexed, so the standard names are ours, and indexing
    # skips lm-eval's thousands of YAMLs.
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)


# ---- functions the shipped YAMLs name (`!function xpert_pl.evaluation.lm_tasks.<name>`) --------------------------


def local_dataset(
    data_files: dict[str, str],
    data_root: str | None = None,
    split: str = "eval",
    subject: str | None = None,
    **_task_metadata: Any,
) -> datasets.DatasetDict:
    """lm-eval `custom_dataset`: jsonl files under the data root as a DatasetDict, one split per file.

    Args:
        data_files: lm-eval split name -> path relative to the data root; `{split}` becomes `split`.
        data_root: the data root (None: $XPERT_DATA_ROOT, else ../shared/data).
        split: `eval` or `eval_final` (the data README's development and final-report sets).
        subject: keep only rows with this `subject` (MMLU).

    Raises:
        DataRootError: a file is missing or has no (matching) rows.
    """
    import datasets

    root = resolve_data_root(data_root)
    splits = {}
    for name, relative in data_files.items():
        path = root / relative.format(split=split)
        if not path.is_file():
            raise DataRootError(f"{path} does not exist")
        stat = path.stat()
        rows = _read_jsonl(str(path), stat.st_mtime_ns, stat.st_size)
        if subject is not None:
            rows = tuple(row for row in rows if row.get("subject") == subject)
        if not rows:
            raise DataRootError(f"{path} has no rows" + (f" of subject '{subject}'" if subject else ""))
        splits[name] = datasets.Dataset.from_list(list(rows))
    return datasets.DatasetDict(splits)


@functools.lru_cache(maxsize=16)
def _read_jsonl(path: str, mtime_ns: int, size: int) -> tuple[dict[str, Any], ...]:
    # Keyed by mtime and size too, so an edited file is re-read; MMLU's 57 subject tasks share one read.
    with open(path, encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


def _hellaswag_preprocess(text: str) -> str:
    # lm-eval's hellaswag/utils.py `preprocess`.
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """lm-eval's HellaSwag clean-up applied to the local rows' `query` and `endings` (giving `choices`)."""

    def process(doc: dict[str, Any]) -> dict[str, Any]:
        choices = [_hellaswag_preprocess(ending) for ending in doc["endings"]]
        return {"query": _hellaswag_preprocess(doc["query"]), "choices": choices, "gold": int(doc["label"])}

    return dataset.map(process)


def winogrande_doc_to_text(doc: dict[str, Any]) -> int:
    """lm-eval's winogrande: the index of the right context (partial scoring)."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc: dict[str, Any]) -> str:
    """lm-eval's winogrande: the continuation, the sentence after the blank."""
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """lm-eval's winogrande: one context per option, the sentence up to the blank with the option filled in."""
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + option for option in (doc["option1"], doc["option2"])]
