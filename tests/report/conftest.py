"""The hand-made runs directory of `report_fixture`, built in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_fixture import build_runs_dir


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return build_runs_dir(tmp_path / "runs")
