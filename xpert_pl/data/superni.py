"""Super-NaturalInstructions in its official task-file format, with the official task lists.

Layout under `root` (the data root's `sft/superni`, or the official repository): `splits/<split>/train_tasks.txt`
and `test_tasks.txt` (one task name per line), and task files `tasks/<name>.json`, also found in sub-folders
(`tasks/train/`, `tasks/test/`) and under a `testset_` prefix (this mirror's 1000-instance subsets). A task file
holds `Definition` (a list of one string), `Positive Examples` and `Instances` (`{id, input, output: [str]}`).

An example's instruction is the task definition and its input the instance input, in the Alpaca template; it
trains on the first reference output. Per train task a seeded shuffle of the instances (seed and task name) gives
the first `val_per_task` to the validation set `superni_val` and the next `max_per_task` to training (Tk-Instruct
also samples 100 instances per train task); per test task the first `test_max_per_task` instances form the test
set `superni_test` (Tk-Instruct evaluates on the first 100). Tasks listed without a file are counted and logged:
this offline mirror has 59 of the 756 train tasks and 4 of the 119 test tasks.

`exclude_mmlu` drops tasks derived from MMLU (names containing `mmmlu_answer_generation`, task664-task737): 57 of
the mirror's 59 train tasks. Keep them out of any run whose MMLU score is reported.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from xpert_pl.data.instruction_sources import InstructionSource, InstructionSplits, resolve_paths
from xpert_pl.data.prompts import InstructionExample

log = logging.getLogger(__name__)

MMLU_TASK_MARKER = "mmmlu_answer_generation"
SUPERNI_HUB_ID = "Muennighoff/natural-instructions"


def is_mmlu_task(name: str) -> bool:
    """True for the MMLU-derived SuperNI tasks (`task664`-`task737 *_mmmlu_answer_generation_*`)."""
    return MMLU_TASK_MARKER in name


def read_task_list(path: str | Path) -> list[str]:
    """Task names of an official split file, one per line (blank lines and `#` comments skipped)."""
    lines = (line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def index_task_files(tasks_dir: str | Path) -> dict[str, Path]:
    """Task name -> file for every `*.json` under `tasks_dir` (sub-folders too); a full file wins over a
    `testset_` subset of the same task."""
    index: dict[str, Path] = {}
    for path in sorted(Path(tasks_dir).rglob("*.json"), key=lambda p: (p.name.startswith("testset_"), str(p))):
        index.setdefault(path.stem.removeprefix("testset_"), path)
    return index


def select_tasks(listed: list[str], available: set[str], exclude_mmlu: bool) -> tuple[list[str], dict[str, int]]:
    """The listed tasks that have a file, minus MMLU-derived ones when asked, and how many of each were skipped."""
    present = [t for t in listed if t in available]
    mmlu = [t for t in present if is_mmlu_task(t)]
    chosen = [t for t in present if not (exclude_mmlu and is_mmlu_task(t))]
    counts = {
        "listed": len(listed),
        "missing": len(listed) - len(present),
        "mmlu": len(mmlu),
        "excluded_mmlu": len(mmlu) if exclude_mmlu else 0,
        "used": len(chosen),
    }
    return chosen, counts


def task_examples(task: dict[str, Any]) -> list[InstructionExample]:
    """One example per instance: definition as instruction, instance input as input, first output as response."""
    definition = task["Definition"]
    instruction = (definition[0] if isinstance(definition, list) else definition).strip()
    examples = []
    for inst in task["Instances"]:
        outputs = inst["output"] if isinstance(inst["output"], list) else [inst["output"]]
        if outputs:
            examples.append(InstructionExample(instruction, inst["input"], outputs[0]))
    return examples


def tasks_from_hub_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group flat Hub rows (`task_name`, `id`, `definition`, `inputs`, `targets`) into official task dicts."""
    tasks: dict[str, dict[str, Any]] = defaultdict(lambda: {"Definition": [], "Instances": []})
    for row in rows:
        task = tasks[row["task_name"]]
        task["Definition"] = [row["definition"]]
        task["Instances"].append({"id": row["id"], "input": row["inputs"], "output": [row["targets"]]})
    return dict(tasks)


class SuperNIInstructions(InstructionSource):
    """Super-NaturalInstructions: train tasks (capped, seeded) with a held-out validation set, and test tasks."""

    def __init__(
        self,
        root: str = "sft/superni",
        split: str = "default",
        max_per_task: int | None = 100,
        val_per_task: int = 5,
        test_max_per_task: int | None = 100,
        exclude_mmlu: bool = False,
        seed: int = 42,
        hub_id: str | None = None,
    ):
        """
        Args:
            root: SuperNI directory, relative to the data root or absolute.
            split: folder under `splits/` with `train_tasks.txt` and `test_tasks.txt`.
            max_per_task: training instances per train task, sampled with `seed` (None: all).
            val_per_task: instances per train task held out (before the cap) for the validation set `superni_val`.
            test_max_per_task: the first N instances of each test task (None: all).
            exclude_mmlu: leave out MMLU-derived tasks (`*mmmlu_answer_generation*`).
            seed: seed of the per-task instance sampling.
            hub_id: read `Muennighoff/natural-instructions` (flat rows, its train/test splits standing for the
                official task lists) from the Hugging Face Hub instead; needs network access.
        """
        self.root = root
        self.split = split
        self.max_per_task = max_per_task
        self.val_per_task = val_per_task
        self.test_max_per_task = test_max_per_task
        self.exclude_mmlu = exclude_mmlu
        self.seed = seed
        self.hub_id = hub_id
        self._report: dict[str, Any] = {}

    @property
    def validation_names(self) -> list[str]:
        return ["superni_val"]

    @property
    def test_names(self) -> list[str]:
        return ["superni_test"]

    def report(self) -> dict[str, Any]:
        return dict(self._report)

    def load(self, data_root: str | None = None) -> InstructionSplits:
        train_tasks, test_tasks = self._hub_tasks() if self.hub_id else self._local_tasks(data_root)
        train, validation = [], []
        for name, task in train_tasks.items():
            instances = list(task["Instances"])
            random.Random(f"{self.seed}:{name}").shuffle(instances)
            held_out, rest = instances[: self.val_per_task], instances[self.val_per_task :]
            validation += task_examples({**task, "Instances": held_out})
            train += task_examples({**task, "Instances": rest[: self.max_per_task]})
        test = [e for task in test_tasks.values() for e in task_examples(_first(task, self.test_max_per_task))]
        self._report["examples"] = {"train": len(train), "superni_val": len(validation), "superni_test": len(test)}
        return InstructionSplits(train, {"superni_val": validation}, {"superni_test": test})

    def _local_tasks(self, data_root: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        (root,) = resolve_paths(self.root, data_root)
        index = index_task_files(root / "tasks")
        splits = {}
        for part in ("train", "test"):
            listed = read_task_list(root / "splits" / self.split / f"{part}_tasks.txt")
            chosen, counts = select_tasks(listed, set(index), self.exclude_mmlu)
            self._report[f"{part}_tasks"] = counts
            splits[part] = {name: json.loads(index[name].read_text(encoding="utf-8")) for name in chosen}
        self._check(splits["train"], splits["test"])
        return splits["train"], splits["test"]

    def _hub_tasks(self) -> tuple[dict[str, Any], dict[str, Any]]:
        import datasets

        splits = {}
        for part in ("train", "test"):
            tasks = tasks_from_hub_rows(list(datasets.load_dataset(self.hub_id, split=part)))
            chosen, counts = select_tasks(sorted(tasks), set(tasks), self.exclude_mmlu)
            self._report[f"{part}_tasks"] = counts
            splits[part] = {name: tasks[name] for name in chosen}
        self._check(splits["train"], splits["test"])
        return splits["train"], splits["test"]

    def _check(self, train: dict[str, Any], test: dict[str, Any]) -> None:
        counts = self._report["train_tasks"]
        if not train:
            raise ValueError(f"SuperNI: no train task left to train on ({counts}); check root/split/exclude_mmlu")
        if counts["mmlu"] and not self.exclude_mmlu:
            log.warning(
                "SuperNI: %d of %d train tasks are MMLU-derived (%s); set exclude_mmlu=true for any run whose "
                "MMLU score you report",
                counts["mmlu"],
                counts["used"],
                MMLU_TASK_MARKER,
            )


def _first(task: dict[str, Any], n: int | None) -> dict[str, Any]:
    return {**task, "Instances": task["Instances"][:n] if n is not None else task["Instances"]}
