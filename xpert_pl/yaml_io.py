"""YAML read strictly: safe loading that refuses a key repeated in one mapping (plain YAML keeps the last one)."""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(ValueError):
    """A YAML mapping repeats a key."""


class UniqueKeySafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that raises DuplicateKeyError on a repeated mapping key, naming it and its line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(f"key '{key}' appears twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML text safely, refusing duplicate keys (DuplicateKeyError) and bad YAML (yaml.YAMLError)."""
    return yaml.load(text, Loader=UniqueKeySafeLoader)  # a SafeLoader: no arbitrary objects
