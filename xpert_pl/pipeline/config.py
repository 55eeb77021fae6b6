"""Configurations as data: YAML files merged the way `--config a.yaml --config b.yaml` merges them, typed overrides
applied on top, and a configuration's pipeline artifacts bound to a `RunLayout`'s paths."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xpert_pl.errors import ConfigError
from xpert_pl.layout import Artifact, RunLayout
from xpert_pl.yaml_io import DuplicateKeyError, load_yaml

Config = dict[str, Any]
# Where a fit configuration holds pluggable classes that may read pipeline artifacts.
ARTIFACT_READERS = ("model.initializer", "model.objective")


def read_config(path: str | Path) -> Config:
    """One YAML config file as a dict (a duplicate key or malformed YAML is the user's error, named)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config '{path}' does not exist"])
    try:
        loaded = load_yaml(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, DuplicateKeyError) as err:
        raise ConfigError([f"{path} is not valid YAML: {err}"]) from err
    if not isinstance(loaded, dict):
        raise ConfigError([f"{path}: expected a mapping of options, got {type(loaded).__name__}"])
    return loaded


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Config:
    """`update` laid over `base`: mappings merge key by key, anything else (lists included) is replaced; a class
    spec whose `class_path` changes is replaced whole (the old class's init_args do not apply to the new one)."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and not _changes_class(old, value):
            merged[key] = merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _changes_class(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return "class_path" in new and old.get("class_path") not in (None, new["class_path"])


def nested(dotted: Mapping[str, Any]) -> Config:
    """`{"trainer.max_steps": 5}` as `{"trainer": {"max_steps": 5}}`."""
    out: Config = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def load_config(files: Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> Config:
    """The configuration `files` make, in order, with `overrides` (dotted keys) applied last."""
    config: Config = {}
    for path in files:
        config = merge(config, read_config(path))
    return merge(config, nested(overrides or {}))


def class_of(class_path: str) -> type:
    """The class a `class_path` names (a user error, named, when it does not exist)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError([f"class_path '{class_path}' does not name a class ({err})"]) from err


def artifact_specs(config: Mapping[str, Any]) -> list[tuple[dict[str, Any], type]]:
    """Every class spec (dict with `class_path`) under the artifact readers of a fit configuration, nested ones
    (e.g. `WithSourceWeights.base`) included, with its class."""
    found: list[tuple[dict[str, Any], type]] = []

    def walk(spec: Any) -> None:
        if not isinstance(spec, dict) or "class_path" not in spec:
            return
        found.append((spec, class_of(spec["class_path"])))
        for value in (spec.get("init_args") or {}).values():
            walk(value)

    for dotted in ARTIFACT_READERS:
        node: Any = config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        walk(node)
    return found


def needed_artifacts(config: Mapping[str, Any]) -> set[Artifact]:
    """The artifact kinds the configuration's classes read."""
    return {kind for _, cls in artifact_specs(config) for kind in getattr(cls, "artifacts", {}).values()}


def bind_artifacts(config: Mapping[str, Any], layout: RunLayout, method: str) -> Config:
    """A copy of a fit configuration whose artifact arguments (each class's `artifacts`) point at `layout`'s
    files; `method` owns the control banks."""
    bound = copy.deepcopy(dict(config))
    for spec, cls in artifact_specs(bound):
        for argument, kind in getattr(cls, "artifacts", {}).items():
            spec.setdefault("init_args", {})[argument] = str(layout.path(kind, method))
    return bound


def build_class(spec: Mapping[str, Any]) -> Any:
    """The object a class spec (`{class_path, init_args}`) describes, its arguments checked against the class's
    signature as a config file's would be."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--built", type=class_of(spec["class_path"]))
    return parser.instantiate_classes(parser.parse_object({"built": dict(spec)})).built


def call_with_config(function: Callable[..., Any], config: Mapping[str, Any]) -> Any:
    """Call a typed function (e.g. `analyze`) with its arguments given as a configuration dict: values are checked
    against its signature and class specs built, as the `xpert <command> --config` line does."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(function, as_group=False)
    parsed = parser.parse_object(dict(config))
    kwargs = parser.instantiate_classes(parsed).as_dict()
    return function(**kwargs)
