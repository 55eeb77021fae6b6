"""Helpers shared by several initializers: reading an analysis, a selection, a bank or the source's experts, and
turning them into dense source-shaped FFN matrices (`SourceFFN`) for `FFNTransfer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from xpert_pl.adaptation import SourceFFN
from xpert_pl.analysis.counter import ActivationCounts
from xpert_pl.analysis.selection import Selection
from xpert_pl.bank.store import KnowledgeBank
from xpert_pl.bank.tucker import collapse
from xpert_pl.layout import SELECTION_FILE
from xpert_pl.provenance import analysis_record, open_checked_source
from xpert_pl.sources.experts import MATRICES
from xpert_pl.sources.reader import expert_reader

Collapse = Literal["frequency", "uniform"]
# source layer -> (expert ids, weights summing to 1)
LayerChoice = dict[int, tuple[list[int], list[float]]]


def load_analysis(analysis: str) -> tuple[ActivationCounts, Selection]:
    """The routing counts and XPERT's selection written by `xpert analyze` into `analysis`."""
    path = Path(analysis)
    if not (path / SELECTION_FILE).is_file():
        raise FileNotFoundError(f"'{path}' is not an analysis directory (no {SELECTION_FILE}); run `xpert analyze`")
    return ActivationCounts.load(path), Selection.load(path / SELECTION_FILE)


def checked_source(
    source: str, artifact: dict[str, Any] | None, kind: str, where: str, trust_remote_code: bool = False
) -> Any:
    """The opened source (see `open_expert_source`), once `artifact` (a selection or an analysis's source data) is
    shown to be made from it; SourceMismatchError otherwise, before any expert is read."""
    return open_checked_source(artifact, kind, where, source, trust_remote_code)[0]


def analysis_source(analysis: str, source: str, trust_remote_code: bool = False) -> Any:
    """The opened source, once the analysis in directory `analysis` is shown to be made from it."""
    return checked_source(source, analysis_record(analysis), "analysis", analysis, trust_remote_code)


def selection_choice(selection: Selection | dict[str, Any], weighting: str = "selection") -> LayerChoice:
    """source layer -> (expert ids, weights) of a selection; `uniform` weighting replaces its weights by 1/n."""
    records = selection.to_dict()["layers"] if isinstance(selection, Selection) else selection["layers"]
    choice = {}
    for record in records:
        ids = [int(e) for e in record["experts"]]
        weights = [1.0 / len(ids)] * len(ids) if weighting == "uniform" else [float(w) for w in record["weights"]]
        total = sum(weights)
        choice[int(record["layer"])] = (ids, [w / total for w in weights])
    return choice


def all_experts_choice(source: Any) -> LayerChoice:
    """Every routed expert of every MoE layer, with uniform weights."""
    counts = expert_reader(source).num_experts
    return {layer: (list(range(e)), [1.0 / e] * e) for layer, e in counts.items()}


def average_experts(source: Any, choice: LayerChoice, progress: bool = True) -> SourceFFN:
    """Per layer, the weighted average of the chosen experts' matrices and their mean Frobenius norm.

    Args:
        source: a `CheckpointExperts` or a live MoE (see `xpert_pl.sources.checkpoint.open_expert_source`).
        choice: source layer -> (expert ids, weights summing to 1).
        progress: show a tqdm bar over layers.
    """
    reader = expert_reader(source)
    layers, norms = {}, {}
    for layer, (ids, weights) in tqdm(sorted(choice.items()), desc="average experts", disable=not progress):
        layers[layer], norms[layer] = {}, {}
        for m in MATRICES:
            total, norm_sum = None, 0.0
            for expert, weight in zip(ids, weights, strict=True):  # one at a time: 64 experts are never stacked
                x = reader.stack(layer, [expert], m)[..., 0].double()
                total = x * weight if total is None else total + x * weight
                norm_sum += float(torch.linalg.matrix_norm(x))
            layers[layer][m], norms[layer][m] = total.float(), norm_sum / len(ids)
    description = {"experts": {str(k): ids for k, (ids, _) in sorted(choice.items())}}
    return SourceFFN(layers=layers, expert_norms=norms, description=description)


def collapse_bank(bank: KnowledgeBank, weighting: Collapse = "frequency") -> SourceFFN:
    """One dense gate/up/down per bank layer: W = G x1 U1 x2 U2 x3 (w^T U3), with the experts' mean norms."""
    if weighting not in ("frequency", "uniform"):
        raise ValueError(f"collapse must be 'frequency' or 'uniform', got '{weighting}'")
    layers, norms = {}, {}
    for layer in bank.source_layers:
        n = len(bank.experts[layer])
        weights = bank.weights[layer] if weighting == "frequency" else torch.full((n,), 1.0 / n)
        entries = {m: bank.entry(layer, m) for m in MATRICES}
        layers[layer] = {m: collapse(e.core, e.factors.factors, weights) for m, e in entries.items()}
        norms[layer] = {m: e.expert_norm for m, e in entries.items()}
    raw = {
        str(layer): {m: float(torch.linalg.matrix_norm(w.double())) for m, w in mats.items()}
        for layer, mats in layers.items()
    }
    description = {
        "collapse": weighting,
        "experts": {str(k): v for k, v in bank.experts.items()},
        "collapsed_norms": raw,
    }
    return SourceFFN(layers=layers, expert_norms=norms, description=description)
