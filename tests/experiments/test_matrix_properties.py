"""Fuzzing the config parsers (hypothesis): any YAML mapping either builds or raises ConfigError listing the
problems, never another exception."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpert_pl.data.domain_sets import load_domain_set
from xpert_pl.errors import ConfigError
from xpert_pl.experiments.matrix import load_matrix

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=False), st.text(max_size=12))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["out_dir", "data", "source", "analyze", "extract", "scales", "budgets", "seeds", "methods", "sft", "sweep_methods"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), VALUES, max_size=8))
def test_matrix_parser_never_crashes(raw, tmp_path):
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(raw))
    try:
        matrix = load_matrix(tmp_path / "m.yaml", root=tmp_path)
    except ConfigError as err:
        assert err.problems and all(isinstance(p, str) and p for p in err.problems)
    else:
        assert matrix.cells()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=VALUES)
def test_domain_set_parser_never_crashes(raw, tmp_path):
    (tmp_path / "domains.yaml").write_text(yaml.safe_dump(raw))
    try:
        specs = load_domain_set(tmp_path / "domains.yaml")
    except ConfigError as err:
        assert err.problems
    else:
        assert specs and all(s.name for s in specs)
