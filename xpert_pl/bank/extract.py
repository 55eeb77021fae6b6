"""Build a knowledge bank from a source MoE and a selection (DESIGN.md sections 2-3)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from xpert_pl.bank.store import BankEntry, KnowledgeBank
from xpert_pl.bank.tucker import TuckerConsolidator
from xpert_pl.checkpoint import CheckpointExperts
from xpert_pl.experts import MATRICES, moe_layers, stack_experts
from xpert_pl.families import config_dict, family_of


def read_selection(selection: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """The selection dict, from a path to `selection.json` or an already loaded dict."""
    if isinstance(selection, dict):
        return selection
    return json.loads(Path(selection).read_text())


def _checked_weights(record: dict[str, Any], num_experts: int) -> torch.Tensor:
    """The record's expert weights as a float32 tensor, validated and renormalised to sum to exactly 1."""
    ids, weights = record["experts"], record.get("weights")
    layer = record["layer"]
    if not ids or len(set(ids)) != len(ids) or any(not 0 <= e < num_experts for e in ids):
        raise ValueError(f"selection layer {layer}: experts {ids} must be distinct ids in [0, {num_experts})")
    if weights is None:  # no weights given: uniform
        weights = [1.0] * len(ids)
    if len(weights) != len(ids) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"selection layer {layer}: weights {weights} must be {len(ids)} non-negative numbers")
    w = torch.tensor(weights, dtype=torch.float64)
    return (w / w.sum()).float()


@dataclass
class _ExpertSource:
    """What extraction needs of a source, live or on disk: routed experts per MoE layer and a stacking reader."""

    num_experts: dict[int, int]
    stack: Callable[[int, list[int], str], torch.Tensor]
    summary: dict[str, Any]


_SUMMARY_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_experts_per_tok")


def _expert_source(source: nn.Module | CheckpointExperts) -> _ExpertSource:
    """Adapt a live model (through `moe_layers`) or a `CheckpointExperts` to one reading interface."""
    if isinstance(source, CheckpointExperts):
        config, family = source.config, source.family
        num_experts = dict.fromkeys(source.moe_layer_indices(), source.num_experts)
        stack = source.stack_experts
    else:
        config = config_dict(source.config)
        family = family_of(config)
        layers = {moe.index: moe for moe in moe_layers(source)}
        num_experts = {i: moe.num_experts for i, moe in layers.items()}

        def stack(layer: int, ids: list[int], matrix: str) -> torch.Tensor:
            return stack_experts(layers[layer].experts, ids, matrix)

    summary = {k: config.get(k) for k in _SUMMARY_KEYS}
    # The expert count lives under a family-specific field; the manifest names it uniformly.
    summary["num_experts"] = family.num_experts(config)
    summary["moe_intermediate_size"] = config.get("moe_intermediate_size")
    summary["moe_layers"] = sorted(num_experts)
    return _ExpertSource(num_experts, stack, summary)


def extract_bank(
    source: nn.Module | CheckpointExperts,
    selection: str | os.PathLike | dict[str, Any],
    consolidator: TuckerConsolidator,
    source_description: dict[str, Any] | None = None,
    progress: bool = True,
) -> KnowledgeBank:
    """Stack the selected experts of every selected layer, per matrix, and Tucker-decompose them.

    Args:
        source: the source MoE of a supported family (see `xpert_pl.families`): a live Hugging Face model, or a
            `CheckpointExperts` that reads only the selected experts from its safetensors files.
        selection: path to `selection.json` or its dict (schema: strategy, n, ..., layers[{layer, experts, weights}]);
            `layer` is the decoder layer index (dense layers of e.g. DeepSeek cannot be selected).
        consolidator: the Tucker settings.
        source_description: JSON-able description of the source (e.g. the builder's `describe()`), stored in
            the manifest next to the model's config summary.
        progress: show a tqdm bar over layers.
    """
    selection = read_selection(selection)
    reader = _expert_source(source)
    entries, weights, experts = {}, {}, {}
    for record in tqdm(selection["layers"], desc="extract bank", unit="layer", disable=not progress):
        layer = int(record["layer"])
        if layer not in reader.num_experts:
            raise ValueError(
                f"selection names layer {layer} but the source's MoE layers are {sorted(reader.num_experts)}"
            )
        ids = [int(e) for e in record["experts"]]
        weights[layer] = _checked_weights(record, reader.num_experts[layer])
        experts[layer] = ids
        entries[layer] = {}
        for matrix in MATRICES:
            stacked = reader.stack(layer, ids, matrix)
            # Mean Frobenius norm of the selected experts: the default rescaling target of the collapse.
            norm = float(torch.linalg.matrix_norm(stacked.permute(2, 0, 1).double()).mean())
            entries[layer][matrix] = BankEntry(factors=consolidator.decompose(stacked), expert_norm=norm)
    manifest = {
        "source": {**reader.summary, **(source_description or {})},
        "selection": selection,
        "tucker": consolidator.describe(),
    }
    return KnowledgeBank(entries=entries, weights=weights, experts=experts, manifest=manifest)
