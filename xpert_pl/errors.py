"""Errors the `xpert` command reports as one clear paragraph (exit status 2) instead of a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """One or more problems with a run's configuration, collected and reported together."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} configuration problem(s):\n{lines}")


def raise_if_problems(problems: list[str]) -> None:
    """Raise one ConfigError listing every problem, if there are any."""
    if problems:
        raise ConfigError(problems)
