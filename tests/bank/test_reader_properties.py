"""Fuzzing the JSON readers (hypothesis): malformed files and manifests raise the kit's clear errors (a ValueError
naming the file), never KeyError, TypeError or a crash."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpert_pl.artifacts import CorruptArtifactError, read_json
from xpert_pl.bank.extract import read_selection
from xpert_pl.bank.store import MANIFEST_FILE, BankIntegrityError, KnowledgeBank

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=15,
)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=200))
def test_read_json_of_any_bytes(data, tmp_path):
    (tmp_path / "x.json").write_bytes(data)
    try:
        read_json(tmp_path / "x.json")
    except CorruptArtifactError as err:
        assert "x.json" in str(err)


@FUZZ
@given(value=JSON)
def test_read_selection_of_any_json(value, tmp_path):
    (tmp_path / "selection.json").write_text(json.dumps(value))
    try:
        selection = read_selection(tmp_path / "selection.json")
    except ValueError as err:
        assert "selection" in str(err)
    else:
        assert isinstance(selection["layers"], list)


@pytest.fixture(scope="module")
def saved_bank(small_bank, tmp_path_factory) -> Path:
    return small_bank.save(tmp_path_factory.mktemp("fuzz") / "bank")


def _paths(obj, prefix=()):
    """Every (path, value) inside a JSON object."""
    yield prefix, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in items:
        yield from _paths(value, (*prefix, key))


@FUZZ
@given(data=st.data())
def test_mutated_bank_manifest(saved_bank, data, tmp_path):
    manifest = json.loads((saved_bank / MANIFEST_FILE).read_text())
    paths = [p for p, _ in _paths(manifest) if p]
    path = data.draw(st.sampled_from(paths))
    mutated = copy.deepcopy(manifest)
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON)
    bank = tmp_path / "bank"
    shutil.rmtree(bank, ignore_errors=True)
    shutil.copytree(saved_bank, bank)
    (bank / MANIFEST_FILE).write_text(json.dumps(mutated))
    try:
        KnowledgeBank.load(bank)
    except BankIntegrityError as err:
        assert str(bank) in str(err) or MANIFEST_FILE in str(err)
