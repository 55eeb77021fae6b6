"""Pipeline stages run in order, each skipped when its output already exists (so a rerun resumes the pipeline)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class CachedStages:
    """Runs named stages in order; a stage whose `done_marker` exists is skipped (cached) and timed as 0 s.

    Args:
        prefix: the tag of the log lines.
        record: a JSON file where each stage that ran adds its seconds (`record_seconds`), as soon as it ends.
        settings_file: a JSON file of the settings each stage was made with; a cached stage whose settings differ
            from the ones given now is refused (ConfigError), never reused as if they were the same.
    """

    def __init__(self, prefix: str = "xpert", record: Path | None = None, settings_file: Path | None = None) -> None:
        self.prefix = prefix
        self.record = record
        self.settings_file = settings_file
        self.seconds: dict[str, float] = {}
        self.cached: list[str] = []

    def run(self, name: str, done_marker: Path, fn: Callable[[], None], settings: Any = None) -> None:
        if done_marker.exists():
            self._check_settings(name, done_marker, settings)
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
        self._record_settings(name, settings)
        log.info("[%s] %s done in %.1f s", self.prefix, name, self.seconds[name])

    def _check_settings(self, name: str, done_marker: Path, settings: Any) -> None:
        from xpert_pl.artifacts import plain_json, read_json
        from xpert_pl.errors import ConfigError

        if settings is None or self.settings_file is None:
            return
        recorded = (read_json(self.settings_file) if self.settings_file.is_file() else {}).get(name)
        if recorded is None:  # made before settings were recorded: taken as made with these
            self._record_settings(name, settings)
            return
        differ = settings_differences(recorded, plain_json(settings))
        if differ:
            details = "; ".join(differ[:4])
            raise ConfigError(
                [
                    f"the {name} stage in '{done_marker.parent}' was made with other settings ({details}); a bench "
                    "never reuses a stage made otherwise. Give the matrix a new out_dir, or move that stage's folder "
                    "away to rebuild it (with every stage and cell made from it)"
                ]
            )

    def _record_settings(self, name: str, settings: Any) -> None:
        from xpert_pl.artifacts import plain_json, read_json, write_json

        if settings is None or self.settings_file is None:
            return
        recorded = read_json(self.settings_file) if self.settings_file.is_file() else {}
        write_json(self.settings_file, {**recorded, name: plain_json(settings)})


def settings_differences(recorded: Any, given: Any, key: str = "") -> list[str]:
    """`key: <recorded> there, <given> now` for every leaf where two JSON-like values differ."""
    if isinstance(recorded, dict) and isinstance(given, dict):
        keys = sorted(recorded.keys() | given.keys())
        return [d for k in keys for d in settings_differences(recorded.get(k), given.get(k), f"{key}.{k}".strip("."))]
    return [] if recorded == given else [f"{key or 'value'}: {recorded!r} there, {given!r} now"]


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
