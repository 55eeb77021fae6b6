"""Experiment matrix YAMLs: the shipped ones build, bad ones fail with every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpert_pl.errors import ConfigError
from xpert_pl.experiments.matrix import load_matrix

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "bench").glob("*.yaml")))
def test_shipped_matrices_build(name):
    matrix = load_matrix(REPO / "configs" / "bench" / name, root=REPO)
    cells = matrix.cells()
    long, short = matrix.budgets[matrix.largest_budget], min(matrix.budgets.values())
    per_seed_scale = len(matrix.methods) + len(matrix.sweep_methods) * (len(matrix.budgets) - 1)
    assert len(cells) == per_seed_scale * len(matrix.seeds) * len(matrix.scales)
    assert {c.steps for c in cells} == set(matrix.budgets.values()) and short < long
    assert {c.method for c in cells if c.steps == short} == set(matrix.sweep_methods)
    assert len(matrix.seeds) >= 2 and len(matrix.budgets) >= 2 and "scratch" in matrix.methods


def test_quick_and_small_sizes():
    quick = load_matrix(REPO / "configs" / "bench" / "quick.yaml", root=REPO)
    small = load_matrix(REPO / "configs" / "bench" / "small.yaml", root=REPO)
    assert len(quick.cells()) == 12
    assert len(small.scales) >= 2 and len(small.seeds) >= 3 and len(small.methods) >= 10


def test_every_problem_is_reported_together(tmp_path):
    (tmp_path / "m.yaml").write_text(
        "out_dir: runs/x\nbudgets: {a: 0}\nseeds: [1, 1]\nmethods: {xpert: nowhere.yaml}\nscales: {}\ncolour: red\n"
        "source: {config: nowhere.yaml}\nanalyze: nowhere.yaml\nextract: nowhere.yaml\nsweep_methods: [scratch]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_matrix(tmp_path / "m.yaml", root=tmp_path)
    text = str(err.value)
    for fragment in (
        "unknown key 'colour'",
        "baseline 'scratch'",
        "budgets",
        "seeds",
        "methods.xpert",
        "scales",
        "source: 'steps'",
        "sweep_methods: 'scratch'",
    ):
        assert fragment in text, fragment
