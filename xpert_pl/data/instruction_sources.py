"""Where SFT examples come from: `InstructionSource` (chosen by `class_path`) and its named splits, and
`JsonlInstructions` for any jsonl files; `DollyInstructions` and `SuperNIInstructions` build on these."""

from __future__ import annotations

import abc
import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpert_pl.data.prompts import InstructionExample, read_examples
from xpert_pl.paths import DATA_ROOT_ENV, DataRootError
from xpert_pl.paths import data_root as resolve_data_root


@dataclass
class InstructionSplits:
    """A source's examples: the training split and named validation and test sets."""

    train: list[InstructionExample]
    validation: dict[str, list[InstructionExample]]
    test: dict[str, list[InstructionExample]] = field(default_factory=dict)


class InstructionSource(abc.ABC):
    """Where an SFT run's examples come from: a small class chosen by `class_path`."""

    @property
    @abc.abstractmethod
    def validation_names(self) -> list[str]:
        """Names of the validation sets, in the order of the validation dataloaders (known before loading)."""

    @property
    def test_names(self) -> list[str]:
        """Names of the test sets, in the order of the test dataloaders."""
        return []

    @abc.abstractmethod
    def load(self, data_root: str | None = None) -> InstructionSplits:
        """Read every split (local files relative to the data root, or a Hub id)."""

    def report(self) -> dict[str, Any]:
        """What `load` selected or skipped (tasks, files), for the logs; empty by default."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for hyperparameters and manifests."""
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


def resolve_paths(patterns: str | list[str], data_root: str | None = None) -> list[Path]:
    """Files matching glob patterns relative to the data root (or absolute), sorted per pattern.

    Raises:
        DataRootError: a pattern matches no file.
    """
    files: list[Path] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        full = pattern if Path(pattern).is_absolute() else str(resolve_data_root(data_root) / pattern)
        matched = sorted(glob.glob(full))
        if not matched:
            raise DataRootError(f"no file matches '{full}' (pattern '{pattern}'); check {DATA_ROOT_ENV} / data_root")
        files += [Path(m) for m in matched]
    return files


def read_example_files(
    patterns: str | list[str], data_root: str | None, input_key: str | None = None, response_key: str | None = None
) -> list[InstructionExample]:
    """Examples of every jsonl file matching `patterns`, in file order."""
    return [e for f in resolve_paths(patterns, data_root) for e in read_examples(f, input_key, response_key)]


class JsonlInstructions(InstructionSource):
    """Any jsonl files of instruction/input/response rows (`input`/`context`, `response`/`output` accepted)."""

    def __init__(
        self,
        train: str | list[str],
        validation: dict[str, str | list[str]] | None = None,
        test: dict[str, str | list[str]] | None = None,
        input_key: str | None = None,
        response_key: str | None = None,
    ):
        """
        Args:
            train: glob pattern(s) of the training files, relative to the data root or absolute.
            validation: validation set name -> glob pattern(s); the names become `val/loss/<name>`.
            test: test set name -> glob pattern(s).
            input_key: field of the optional input (default: `input`, else `context`).
            response_key: field of the response (default: `response`, else `output`; a list trains on its first).
        """
        self.train = train
        self.validation = dict(validation or {})
        self.test = dict(test or {})
        self.input_key = input_key
        self.response_key = response_key

    @property
    def validation_names(self) -> list[str]:
        return list(self.validation)

    @property
    def test_names(self) -> list[str]:
        return list(self.test)

    def load(self, data_root: str | None = None) -> InstructionSplits:
        def read(patterns: str | list[str]) -> list[InstructionExample]:
            return read_example_files(patterns, data_root, self.input_key, self.response_key)

        return InstructionSplits(
            train=read(self.train),
            validation={name: read(p) for name, p in self.validation.items()},
            test={name: read(p) for name, p in self.test.items()},
        )
