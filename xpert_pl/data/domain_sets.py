"""Domain sets: a YAML list of named corpora to analyse (or train on), each read into a `DomainSpec`.

Each entry: `name` (required), then either `files` (a glob or a list of globs, relative to the data root or
absolute; `.jsonl`/`.json`, `.parquet`, or `.txt` with one document per non-blank line) or `hub_id` (with optional
`hub_config`, `hub_split`), plus optional `text_field` (default `text`) and `weight` (default 1). With neither
`files` nor `hub_id` the domain reads `corpus/<name>/*.jsonl`. Example:

    - name: law
      files: [corpus/law/*.jsonl]
    - name: web
      hub_id: allenai/c4
      hub_config: en
      hub_split: validation
      weight: 0.5
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from xpert_pl.data.corpus import DomainSpec, resolve_files, text_file_problem
from xpert_pl.errors import ConfigError
from xpert_pl.paths import DataRootError, path_component_problem
from xpert_pl.yaml_io import DuplicateKeyError, load_yaml

KEYS = tuple(f.name for f in dataclasses.fields(DomainSpec))
_STRING_KEYS = ("name", "hub_id", "hub_config", "hub_split", "text_field")


def load_domain_set(path: str | os.PathLike) -> list[DomainSpec]:
    """Read and validate a domain-set YAML.

    Raises:
        FileNotFoundError: `path` does not exist.
        ConfigError: every problem found (not a list, empty, missing or duplicate names, unknown keys, bad types).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"domain set '{path}' not found")
    try:
        raw = load_yaml(path.read_text())
    except (yaml.YAMLError, DuplicateKeyError) as err:
        raise ConfigError([f"domain set {path} is not valid YAML: {err}"]) from err
    return parse_domain_set(raw, source=str(path))


def parse_domain_set(raw: Any, source: str = "domain set") -> list[DomainSpec]:
    """Validate already-parsed YAML (a list of mappings) into specs; see `load_domain_set`."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError([f"{source}: expected a non-empty YAML list of domains, got {type(raw).__name__}"])
    problems = [p for i, entry in enumerate(raw) for p in _entry_problems(entry, f"{source}: domain #{i + 1}")]
    names = [entry.get("name") for entry in raw if isinstance(entry, dict)]
    duplicates = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if duplicates:
        problems.append(f"{source}: duplicate domain names {duplicates}")
    if problems:  # all of them at once, so one edit of the file can fix every problem
        raise ConfigError(problems)
    return [_to_spec(entry) for entry in raw]


def _entry_problems(entry: Any, where: str) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{where}: expected a mapping with at least `name`, got {entry!r}"]
    if "name" in entry and isinstance(entry["name"], str):
        where = f"{where} ('{entry['name']}')"
    problems = []
    if not entry.get("name"):
        problems.append(f"{where}: missing `name`")
    elif problem := path_component_problem(entry["name"], "domain name"):
        problems.append(f"{where}: {problem}")
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        problems.append(f"{where}: unknown keys {unknown}; allowed: {list(KEYS)}")
    problems += [f"{where}: `{k}` must be a string" for k in _STRING_KEYS if k in entry and not _is_str(entry[k])]
    files = entry.get("files")
    if files is not None and not (_is_str(files) or (isinstance(files, list) and files and all(map(_is_str, files)))):
        problems.append(f"{where}: `files` must be a glob or a non-empty list of globs")
    if files is not None and entry.get("hub_id"):
        problems.append(f"{where}: give either `files` or `hub_id`, not both")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        problems.append(f"{where}: `weight` must be a number >= 0, got {weight!r}")
    return problems


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _to_spec(entry: dict[str, Any]) -> DomainSpec:
    fields = dict(entry)
    if isinstance(fields.get("files"), str):
        fields["files"] = [fields["files"]]
    if "weight" in fields:
        fields["weight"] = float(fields["weight"])
    return DomainSpec(**fields)


def domain_file_problems(specs: list[DomainSpec], data_root: str | None = None, contents: bool = False) -> list[str]:
    """Problems with local domains' files (no match, only empty files, and with `contents` every file's first bad
    line: see `text_file_problem`); Hub domains are not checked offline."""
    problems = []
    for spec in specs:
        if spec.hub_id:
            continue  # read through the Hub when the run starts; nothing local to check
        try:
            files = resolve_files(spec, data_root)
        except DataRootError as err:
            problems.append(str(err))
            continue
        if all(os.path.getsize(f) == 0 for f in files):
            problems.append(f"domain '{spec.name}': every file is empty: {', '.join(files)}")
        elif contents:
            found = (text_file_problem(f, spec.text_field) for f in files)
            problems += [f"domain '{spec.name}': {p}" for p in found if p is not None]
    return problems


def describe_domain_set(specs: list[DomainSpec], data_root: str | None = None) -> list[dict[str, Any]]:
    """The exact domain set for a manifest: each spec's fields plus, for local domains, the resolved files."""
    described = []
    for spec in specs:
        entry = dataclasses.asdict(spec)
        if not spec.hub_id:
            entry["resolved_files"] = resolve_files(spec, data_root)
        described.append(entry)
    return described
