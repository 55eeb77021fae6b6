"""Build a knowledge bank from a source MoE and a selection (DESIGN.md sections 2-3)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from xpert_pl.bank.store import BankEntry, KnowledgeBank
from xpert_pl.bank.tucker import TuckerConsolidator
from xpert_pl.experts import MATRICES, moe_layers, stack_experts


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


def _source_summary(model: nn.Module) -> dict[str, Any]:
    config = model.config
    keys = (
        "model_type",
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_experts",
        "num_experts_per_tok",
        "vocab_size",
    )
    return {k: getattr(config, k, None) for k in keys}


def extract_bank(
    model: nn.Module,
    selection: str | os.PathLike | dict[str, Any],
    consolidator: TuckerConsolidator,
    source_description: dict[str, Any] | None = None,
    progress: bool = True,
) -> KnowledgeBank:
    """Stack the selected experts of every selected layer, per matrix, and Tucker-decompose them.

    Args:
        model: the source MoE (a supported Hugging Face family, see `xpert_pl.experts`).
        selection: path to `selection.json` or its dict (schema: strategy, n, ..., layers[{layer, experts, weights}]).
        consolidator: the Tucker settings.
        source_description: JSON-able description of the source (e.g. the builder's `describe()`), stored in
            the manifest next to the model's config summary.
        progress: show a tqdm bar over layers.
    """
    selection = read_selection(selection)
    layers = {moe.index: moe for moe in moe_layers(model)}
    entries, weights, experts = {}, {}, {}
    for record in tqdm(selection["layers"], desc="extract bank", unit="layer", disable=not progress):
        layer = int(record["layer"])
        if layer not in layers:
            raise ValueError(f"selection names layer {layer} but the source has layers 0..{len(layers) - 1}")
        moe = layers[layer]
        ids = [int(e) for e in record["experts"]]
        weights[layer] = _checked_weights(record, moe.num_experts)
        experts[layer] = ids
        entries[layer] = {}
        for matrix in MATRICES:
            stacked = stack_experts(moe.experts, ids, matrix)
            # Mean Frobenius norm of the selected experts: the default rescaling target of the collapse.
            norm = float(torch.linalg.matrix_norm(stacked.permute(2, 0, 1).double()).mean())
            entries[layer][matrix] = BankEntry(factors=consolidator.decompose(stacked), expert_norm=norm)
    manifest = {
        "source": {**_source_summary(model), **(source_description or {})},
        "selection": selection,
        "tucker": consolidator.describe(),
    }
    return KnowledgeBank(entries=entries, weights=weights, experts=experts, manifest=manifest)
