"""Pipeline stages run in order, each skipped when its output already exists (so a rerun resumes the pipeline)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)


class CachedStages:
    """Runs named stages in order; a stage whose `done_marker` exists is skipped (cached) and timed as 0 s.

    Args:
        prefix: the tag of the log lines.
        record: a JSON file where each stage that ran adds its seconds (`record_seconds`), as soon as it ends.
    """

    def __init__(self, prefix: str = "xpert", record: Path | None = None) -> None:
        self.prefix = prefix
        self.record = record
        self.seconds: dict[str, float] = {}
        self.cached: list[str] = []

    def run(self, name: str, done_marker: Path, fn: Callable[[], None]) -> None:
        if done_marker.exists():
            log.info("[%s] %s: cached (%s)", self.prefix, name, done_marker)
            self.cached.append(name)
            self.seconds[name] = 0.0
            return
        log.info("[%s] %s ...", self.prefix, name)
        start = time.perf_counter()
        fn()
        self.seconds[name] = time.perf_counter() - start
        if self.record is not None:
            record_seconds(self.record, {name: self.seconds[name]})
        log.info("[%s] %s done in %.1f s", self.prefix, name, self.seconds[name])


def record_seconds(path: Path, seconds: Mapping[str, float]) -> None:
    """Add `seconds` (name -> s) to the totals kept in the JSON file `path`."""
    from xpert_pl.artifacts import read_json, write_json  # loads torch: only once a stage has run

    totals = read_json(path) if path.is_file() else {}
    for name, value in seconds.items():
        totals[name] = totals.get(name, 0.0) + value
    write_json(path, totals)


def validation_interval(steps: int, points: int = 6) -> int:
    """The largest divisor of `steps` giving at least `points` validations, so the last step is validated."""
    return max(d for d in range(1, max(1, steps // points) + 1) if steps % d == 0)
