"""Finished pieces of a long step (analysis domains, bank layers) kept beside its output, so a killed or failed
run redoes only the unfinished ones when it is started again."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xpert_pl.artifacts import CorruptArtifactError, artifact_kind, atomic_directory, read_json, write_json
from xpert_pl.errors import ConfigError
from xpert_pl.paths import path_component_problem

log = logging.getLogger(__name__)
FINGERPRINT_FILE = "fingerprint.json"


def partial_directory(out_dir: str | Path) -> Path:
    """Where the finished pieces of `out_dir` wait: a hidden sibling, `.<name>.partial`."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.partial"


class FinishedUnits:
    """Named units of work, each a directory written atomically, valid only for the settings they were made with.

    A unit exists once its directory does (it is renamed into place when complete), so a run killed mid-unit
    leaves no half unit. If the settings (`fingerprint`) differ from those the directory was made with, every
    unit is discarded: results of other settings are never mixed in.
    """

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any]):
        self.directory = Path(directory)
        self.fingerprint = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
        stored = self._stored_fingerprint()
        if stored is not None and stored != self.fingerprint:
            log.info("discarding %s: it was made with other settings", self.directory)
            self._remove()
        if not self.directory.is_dir():
            write_json(self.directory / FINGERPRINT_FILE, {"sha256": self.fingerprint})

    def _stored_fingerprint(self) -> str | None:
        path = self.directory / FINGERPRINT_FILE
        if not self.directory.exists():
            return None
        try:
            stored = read_json(path)
        except (FileNotFoundError, CorruptArtifactError):
            return ""  # unreadable: treated as other settings
        return stored.get("sha256", "") if isinstance(stored, dict) else ""

    def done(self) -> list[str]:
        """Names of the finished units."""
        return sorted(p.name for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith("."))

    def has(self, name: str) -> bool:
        return self.path(name).is_dir()

    def path(self, name: str) -> Path:
        if problem := path_component_problem(name, "unit name"):
            raise ValueError(problem)
        return self.directory / name

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A temporary directory that becomes unit `name` when the block succeeds."""
        with atomic_directory(self.path(name), "unit") as tmp:
            yield tmp

    def discard(self) -> None:
        """Remove every unit (once the step's output is written)."""
        if self.directory.is_dir():
            self._remove()

    def _remove(self) -> None:
        """Remove the directory, which must hold only what the kit put there: anything else is refused, not deleted."""
        foreign = [p.name for p in self.directory.iterdir() if not _kit_owned(p)]
        if foreign:
            raise ConfigError(
                [
                    f"'{self.directory}' holds files the kit did not write ({', '.join(sorted(foreign)[:5])}); it "
                    "keeps a step's finished pieces there, so move those files away and re-run"
                ]
            )
        shutil.rmtree(self.directory)


def _kit_owned(path: Path) -> bool:
    """Whether `path`, inside a partial directory, is the kit's: the fingerprint, a unit, or a temporary of one."""
    if path.name == FINGERPRINT_FILE or (path.name.startswith(".") and path.name.endswith((".tmp", ".old"))):
        return True
    return path.is_dir() and artifact_kind(path) is not None
