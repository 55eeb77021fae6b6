"""Fixtures: tiny random-weight MoEs of every supported family, live and saved as Hugging Face checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_families import FAMILY_NAMES, build_model
from torch import nn


@pytest.fixture(scope="session")
def saved_families(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    """Per family: the live tiny model and the directory `save_pretrained` wrote it to."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for family in FAMILY_NAMES:
        model = build_model(family)
        model.save_pretrained(root / family)
        out[family] = (model, root / family)
    return out


@pytest.fixture(scope="session")
def sharded_olmoe(tmp_path_factory) -> tuple[nn.Module, Path]:
    """A tiny OLMoE saved in several small shards with a `model.safetensors.index.json`."""
    model = build_model("olmoe", seed=1)
    directory = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(directory, max_shard_size=30_000)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3, "the fixture should give several shards"
    return model, directory
