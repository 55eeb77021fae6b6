"""databricks-dolly-15k as MiniLLM uses it: local train/dev files and DollyEval, or the Hub set split by seed.

Offline (default): `sft/dolly/train.jsonl` (11,506 rows) and `sft/dolly/dev.jsonl` (1,000; validation set
`dolly_dev`) are MiniLLM's own train and dev rows, and the test set `dollyeval` is `eval/dollyeval/test.jsonl`
(MiniLLM's 500-row DollyEval minus the quarter kept in `eval_final/`). None of the DollyEval rows is in train/dev.

Online (`hub_id: databricks/databricks-dolly-15k`): `minillm_dolly_split` makes the split MiniLLM describes. Its
paper: "we randomly split 0.5K and 1K samples for validation and testing, respectively, leaving about 12.5K
examples for training"; its released files use the 500-row set as the test set (DollyEval, `valid.jsonl`) and
the 1,000-row set as the dev set (`--dev-num 1000`), and its shuffle seed is not published. This kit therefore
uses: a `torch.randperm` of all rows under `split_seed` (default 42); the first `n_test` (500) rows are the test
set, the next `n_validation` (1,000) the validation set, the rest (13,511 of 15,011) train; each split keeps the
Hub file's order. MiniLLM also drops examples whose prompt exceeds 256 (GPT-2) tokens, which leaves ~12.5K for
training: set `SFTDataModule(max_prompt_length=256, long_prompt="drop")` for that. The rows differ from MiniLLM's
(another seed and permutation), the protocol does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from xpert_pl.data.instruction_sources import InstructionSource, InstructionSplits, read_example_files
from xpert_pl.data.prompts import example_from_row

T = TypeVar("T")
DOLLY_HUB_ID = "databricks/databricks-dolly-15k"


def minillm_dolly_split(
    rows: Sequence[T], seed: int = 42, n_validation: int = 1000, n_test: int = 500
) -> dict[str, list[T]]:
    """Split rows into train/validation/test by a seeded permutation (see the module docstring).

    Returns:
        `{"train", "validation", "test"}` lists, each in the original order of `rows`.

    Raises:
        ValueError: fewer rows than `n_validation + n_test`, or negative sizes.
    """
    if n_validation < 0 or n_test < 0 or n_validation + n_test > len(rows):
        raise ValueError(f"cannot hold out {n_validation} + {n_test} of {len(rows)} rows")
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    parts = {
        "train": perm[n_test + n_validation :],
        "validation": perm[n_test : n_test + n_validation],
        "test": perm[:n_test],
    }
    return {name: [rows[i] for i in sorted(idx)] for name, idx in parts.items()}


class DollyInstructions(InstructionSource):
    """databricks-dolly-15k: validation set `dolly_dev`, test set `dollyeval` (DollyEval)."""

    def __init__(
        self,
        train: str = "sft/dolly/train.jsonl",
        validation: str = "sft/dolly/dev.jsonl",
        test: str | None = "eval/dollyeval/test.jsonl",
        hub_id: str | None = None,
        hub_split: str = "train",
        split_seed: int = 42,
        n_validation: int = 1000,
        n_test: int = 500,
    ):
        """
        Args:
            train: training file(s), relative to the data root or absolute (Dolly or MiniLLM rows).
            validation: the validation file(s) (set `dolly_dev`).
            test: the test file(s) (set `dollyeval`); null: no test set.
            hub_id: read `databricks/databricks-dolly-15k` from the Hugging Face Hub instead (needs network
                access) and split it with `minillm_dolly_split`; the file arguments are then unused.
            hub_split: the Hub split that holds all rows.
            split_seed: seed of the Hub split.
            n_validation: validation rows of the Hub split.
            n_test: test rows of the Hub split.
        """
        self.train = train
        self.validation = validation
        self.test = test
        self.hub_id = hub_id
        self.hub_split = hub_split
        self.split_seed = split_seed
        self.n_validation = n_validation
        self.n_test = n_test

    @property
    def validation_names(self) -> list[str]:
        return ["dolly_dev"]

    @property
    def test_names(self) -> list[str]:
        return ["dollyeval"] if self.test is not None or self.hub_id else []

    def load(self, data_root: str | None = None) -> InstructionSplits:
        if self.hub_id:
            return self._load_hub()
        return InstructionSplits(
            train=read_example_files(self.train, data_root),
            validation={"dolly_dev": read_example_files(self.validation, data_root)},
            test={"dollyeval": read_example_files(self.test, data_root)} if self.test is not None else {},
        )

    def _load_hub(self) -> InstructionSplits:
        import datasets

        rows: list[dict[str, Any]] = list(datasets.load_dataset(self.hub_id, split=self.hub_split))
        parts = minillm_dolly_split(rows, self.split_seed, self.n_validation, self.n_test)
        examples = {name: [example_from_row(r) for r in part] for name, part in parts.items()}
        return InstructionSplits(
            train=examples["train"],
            validation={"dolly_dev": examples["validation"]},
            test={"dollyeval": examples["test"]},
        )
