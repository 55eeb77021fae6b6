"""Ablation controls of XPERT: the same procedure with one ingredient swapped (paper reviewers' controls).

- `RandomExpertsInit`, `RareExpertsInit`: XPERT's Tucker bank built from another expert selection (a seeded
  random subset, or the least frequent experts) of the same size n.
- `FullExpertsInit`: XPERT's experts, no decomposition: their weighted average.
- `SingleExpertInit`: the single most frequently routed expert of each layer, as it is.

All of them adapt to the student exactly as XPERT does (`FFNTransfer`) and leave the same tensors untouched, so
each differs from `XpertInit` in one thing.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from xpert_pl.analysis.counter import ActivationCounts
from xpert_pl.analysis.selection import ExpertSelector, Selection
from xpert_pl.analysis.strategies import LeastFrequentSelector, RandomExpertSelector, TopFrequencySelector
from xpert_pl.bank.adapt import DepthStrategy, RescaleMode
from xpert_pl.bank.extract import expert_reader, extract_bank
from xpert_pl.bank.store import KnowledgeBank
from xpert_pl.bank.tucker import TuckerConsolidator
from xpert_pl.checkpoint import open_expert_source
from xpert_pl.errors import ConfigError
from xpert_pl.experts import MATRICES
from xpert_pl.initializers.transfer import FFNTransfer, FFNTransferInit, NeuronSelection, SourceFFN, WiderFFN
from xpert_pl.initializers.xpert import Collapse, collapse_bank
from xpert_pl.provenance import analysis_record, open_checked_source

SELECTION_FILE = "selection.json"


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
    opened, _ = open_checked_source(
        artifact, kind, where, source, lambda: open_expert_source(source, trust_remote_code)
    )
    return opened


def analysis_source(analysis: str, source: str, trust_remote_code: bool = False) -> Any:
    """The opened source, once the analysis in directory `analysis` is shown to be made from it."""
    return checked_source(source, analysis_record(analysis), "analysis", analysis, trust_remote_code)


def average_experts(source: Any, choice: dict[int, tuple[list[int], list[float]]], progress: bool = True) -> SourceFFN:
    """Per layer, the weighted average of the chosen experts' matrices and their mean Frobenius norm.

    Args:
        source: a `CheckpointExperts` or a live MoE (see `xpert_pl.checkpoint.open_expert_source`).
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


def selection_choice(selection: Selection | dict[str, Any], weighting: str = "selection"):
    """source layer -> (expert ids, weights) of a selection; `uniform` weighting replaces its weights by 1/n."""
    records = selection.to_dict()["layers"] if isinstance(selection, Selection) else selection["layers"]
    choice = {}
    for record in records:
        ids = [int(e) for e in record["experts"]]
        weights = [1.0 / len(ids)] * len(ids) if weighting == "uniform" else [float(w) for w in record["weights"]]
        total = sum(weights)
        choice[int(record["layer"])] = (ids, [w / total for w in weights])
    return choice


class ReselectedBankInit(FFNTransferInit):
    """XPERT's Tucker bank, built in memory from the source and its routing counts with another selector."""

    def __init__(
        self,
        source: str,
        analysis: str,
        n: int | None,
        consolidator: TuckerConsolidator | None,
        collapse: Collapse,
        transfer: FFNTransfer,
        trust_remote_code: bool,
    ):
        super().__init__(transfer)
        self.source, self.analysis, self.n = source, analysis, n
        self.consolidator = consolidator or TuckerConsolidator()
        self.collapse = collapse
        self.trust_remote_code = trust_remote_code

    @abc.abstractmethod
    def selector(self, n: int) -> ExpertSelector:
        """The selection strategy of this control, keeping n experts per layer."""

    def preflight(self) -> None:
        counts, xpert_selection = load_analysis(self.analysis)
        analysis_source(self.analysis, self.source, self.trust_remote_code)
        n = self.n or xpert_selection.n
        if n > counts.num_experts:
            problem = f"{type(self).__name__}: n={n} experts per layer, but the source has {counts.num_experts}"
            raise ConfigError([problem])

    def build_bank(self) -> KnowledgeBank:
        """Select with `selector` (n: this control's, else XPERT's), read those experts, decompose them."""
        counts, xpert_selection = load_analysis(self.analysis)
        source = analysis_source(self.analysis, self.source, self.trust_remote_code)
        selection = self.selector(self.n or xpert_selection.n).select(counts).to_dict()
        return extract_bank(source, selection, self.consolidator, {"model": str(self.source)}, progress=False)

    def source_ffn(self, num_target_layers: int) -> SourceFFN:
        bank = self.build_bank()
        ffn = collapse_bank(bank, self.collapse)
        ffn.description = {"source": self.source, "selection": bank.manifest["selection"], **ffn.description}
        return ffn


class RandomExpertsInit(ReselectedBankInit):
    """Control: XPERT with a seeded random subset of the same number of experts per layer."""

    def __init__(
        self,
        source: str,
        analysis: str,
        n: int | None = None,
        seed: int = 0,
        consolidator: TuckerConsolidator | None = None,
        collapse: Collapse = "uniform",
        rescale: RescaleMode = "expert_norm",
        depth_strategy: DepthStrategy = "uniform",
        neuron_selection: NeuronSelection = "energy",
        wider_ffn: WiderFFN = "scratch",
        trust_remote_code: bool = False,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            analysis: directory written by `xpert analyze` (routing counts and XPERT's selection).
            n: experts per layer (None: the same n as XPERT's selection).
            seed: seed of the draw (independent per layer).
            consolidator: Tucker settings (None: the defaults of `xpert extract`).
            collapse: expert weights of the collapse: `uniform` (random experts have no meaningful frequency
                weights) or `frequency`.
            rescale: as `XpertInit.rescale`.
            depth_strategy: as `XpertInit.depth_strategy`.
            neuron_selection: as `XpertInit.neuron_selection`.
            wider_ffn: as `XpertInit.wider_ffn`.
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
        """
        transfer = FFNTransfer(rescale, depth_strategy, neuron_selection, wider_ffn)
        super().__init__(source, analysis, n, consolidator, collapse, transfer, trust_remote_code)
        self.seed = seed

    def selector(self, n: int) -> ExpertSelector:
        return RandomExpertSelector(n=n, seed=self.seed, weighting="uniform")


class RareExpertsInit(ReselectedBankInit):
    """Control: XPERT with the least frequently routed experts of each layer (the same n)."""

    def __init__(
        self,
        source: str,
        analysis: str,
        n: int | None = None,
        consolidator: TuckerConsolidator | None = None,
        collapse: Collapse = "frequency",
        rescale: RescaleMode = "expert_norm",
        depth_strategy: DepthStrategy = "uniform",
        neuron_selection: NeuronSelection = "energy",
        wider_ffn: WiderFFN = "scratch",
        trust_remote_code: bool = False,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            analysis: directory written by `xpert analyze` (routing counts and XPERT's selection).
            n: experts per layer (None: the same n as XPERT's selection).
            consolidator: Tucker settings (None: the defaults of `xpert extract`).
            collapse: expert weights of the collapse: `frequency` or `uniform`.
            rescale: as `XpertInit.rescale`.
            depth_strategy: as `XpertInit.depth_strategy`.
            neuron_selection: as `XpertInit.neuron_selection`.
            wider_ffn: as `XpertInit.wider_ffn`.
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
        """
        transfer = FFNTransfer(rescale, depth_strategy, neuron_selection, wider_ffn)
        super().__init__(source, analysis, n, consolidator, collapse, transfer, trust_remote_code)

    def selector(self, n: int) -> ExpertSelector:
        return LeastFrequentSelector(n=n)


class FullExpertsInit(FFNTransferInit):
    """Control: XPERT's selected experts without the Tucker step: their weighted average."""

    def __init__(
        self,
        source: str,
        selection: str,
        weighting: Literal["selection", "uniform"] = "selection",
        rescale: RescaleMode = "expert_norm",
        depth_strategy: DepthStrategy = "uniform",
        neuron_selection: NeuronSelection = "energy",
        wider_ffn: WiderFFN = "scratch",
        trust_remote_code: bool = False,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            selection: `selection.json` written by `xpert analyze` (the experts XPERT decomposes).
            weighting: `selection` (its routing-frequency weights) or `uniform`.
            rescale: as `XpertInit.rescale`.
            depth_strategy: as `XpertInit.depth_strategy`.
            neuron_selection: as `XpertInit.neuron_selection`.
            wider_ffn: as `XpertInit.wider_ffn`.
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
        """
        if weighting not in ("selection", "uniform"):
            raise ValueError(f"weighting must be 'selection' or 'uniform', got '{weighting}'")
        super().__init__(FFNTransfer(rescale, depth_strategy, neuron_selection, wider_ffn))
        self.source, self.selection, self.weighting = source, selection, weighting
        self.trust_remote_code = trust_remote_code

    def preflight(self) -> None:
        if not Path(self.selection).is_file():
            raise FileNotFoundError(f"selection '{self.selection}' not found; run `xpert analyze` first")
        selection = Selection.load(self.selection).to_dict()
        checked_source(self.source, selection, "selection", self.selection, self.trust_remote_code)

    def source_ffn(self, num_target_layers: int) -> SourceFFN:
        if not Path(self.selection).is_file():
            raise FileNotFoundError(f"selection '{self.selection}' not found; run `xpert analyze` first")
        selection = Selection.load(self.selection)
        source = checked_source(self.source, selection.to_dict(), "selection", self.selection, self.trust_remote_code)
        ffn = average_experts(source, selection_choice(selection, self.weighting), progress=False)
        ffn.description = {
            "source": self.source,
            "selection": self.selection,
            "weighting": self.weighting,
            **ffn.description,
        }
        return ffn


class SingleExpertInit(FFNTransferInit):
    """Control: the single most frequently routed expert of each layer (mean frequency over domains), as is."""

    def __init__(
        self,
        source: str,
        analysis: str,
        rescale: RescaleMode = "none",
        depth_strategy: DepthStrategy = "uniform",
        neuron_selection: NeuronSelection = "energy",
        wider_ffn: WiderFFN = "scratch",
        trust_remote_code: bool = False,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            analysis: directory written by `xpert analyze` (its routing counts rank the experts).
            rescale: as `XpertInit.rescale` (`none` and `expert_norm` coincide for one expert).
            depth_strategy: as `XpertInit.depth_strategy`.
            neuron_selection: as `XpertInit.neuron_selection`.
            wider_ffn: as `XpertInit.wider_ffn`.
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
        """
        super().__init__(FFNTransfer(rescale, depth_strategy, neuron_selection, wider_ffn))
        self.source, self.analysis, self.trust_remote_code = source, analysis, trust_remote_code

    def preflight(self) -> None:
        load_analysis(self.analysis)
        analysis_source(self.analysis, self.source, self.trust_remote_code)

    def source_ffn(self, num_target_layers: int) -> SourceFFN:
        counts, _ = load_analysis(self.analysis)
        source = analysis_source(self.analysis, self.source, self.trust_remote_code)
        ffn = average_experts(source, selection_choice(TopFrequencySelector(n=1).select(counts)), False)
        ffn.description = {"source": self.source, "analysis": self.analysis, **ffn.description}
        return ffn
