"""Referee controls of XPERT: the same procedure with one ingredient swapped (the paper reviewers' controls).

- `RandomExpertsInit`, `RareExpertsInit`, `SingleDomainExpertsInit`: XPERT's Tucker bank built from another
  expert selection (a seeded random subset, the least frequent experts, or one domain's most used: the paper's
  Figure 5) of the same size n.
- `AlignedXpertInit`: XPERT's own selection, each expert's intermediate neurons aligned to one reference expert
  before stacking (Hungarian matching on weight correlations, `xpert_pl.bank.align`).
- `FullExpertsInit`: XPERT's experts, no decomposition: their weighted average.
- `SingleExpertInit`: the single most frequently routed expert of each layer, as it is.

All of them adapt to the student exactly as XPERT does (`FFNTransfer`) and leave the same tensors untouched, so
each differs from `XpertInit` in one thing.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Literal

from xpert_pl.adaptation import SourceFFN
from xpert_pl.analysis.selection import ExpertSelector, Selection
from xpert_pl.analysis.strategies import (
    DomainSpecialistSelector,
    LeastFrequentSelector,
    RandomExpertSelector,
    TopFrequencySelector,
)
from xpert_pl.bank.extract import extract_bank
from xpert_pl.bank.store import KnowledgeBank
from xpert_pl.bank.tucker import TuckerConsolidator
from xpert_pl.errors import ConfigError
from xpert_pl.initializers.shared import (
    Collapse,
    analysis_source,
    average_experts,
    checked_source,
    collapse_bank,
    load_analysis,
    selection_choice,
)
from xpert_pl.initializers.transfer import FFNTransfer, FFNTransferInit
from xpert_pl.layout import Artifact


class ReselectedBankInit(FFNTransferInit):
    """XPERT's Tucker bank, built in memory from the source and its routing counts with another selector (or, for
    `AlignedXpertInit`, XPERT's own selection with its experts' neurons aligned)."""

    artifacts: ClassVar[dict[str, Artifact]] = {
        "source": Artifact.SOURCE,
        "analysis": Artifact.ANALYSIS,
        "bank": Artifact.CONTROL_BANK,
    }
    align_neurons: ClassVar[bool] = False
    """Whether the bank's experts have their intermediate neurons aligned before stacking (`extract_bank`)."""

    def __init__(
        self,
        source: str,
        analysis: str,
        n: int | None,
        consolidator: TuckerConsolidator | None,
        collapse: Collapse,
        transfer: FFNTransfer,
        trust_remote_code: bool,
        bank: str | None,
    ):
        super().__init__(transfer)
        self.source, self.analysis, self.n = source, analysis, n
        self.consolidator = consolidator or TuckerConsolidator()
        self.collapse = collapse
        self.trust_remote_code = trust_remote_code
        self.bank = bank
        self._staged: KnowledgeBank | None = None

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
        if self.bank is not None:
            self.staged_bank()

    def selection(self) -> dict[str, Any]:
        """This control's selection (n: this control's, else XPERT's), from the analysis's routing counts."""
        counts, xpert_selection = load_analysis(self.analysis)
        return self.selector(self.n or xpert_selection.n).select(counts).to_dict()

    def build_bank(self) -> KnowledgeBank:
        """Read the experts of `selection()` from the source and decompose them (`xpert bench run` does this once,
        as a stage, and hands the bank to every cell as `bank`)."""
        selection = self.selection()  # a missing analysis is named before the source is opened
        source = analysis_source(self.analysis, self.source, self.trust_remote_code)
        description = {"model": str(self.source)}
        return extract_bank(
            source, selection, self.consolidator, description, progress=False, align_neurons=self.align_neurons
        )

    def staged_bank(self) -> KnowledgeBank:
        """The bank at `bank`, refused unless it holds exactly this control's selection, Tucker settings and neuron
        alignment, one bank layer per source layer; loaded (and checked) on first use, as `XpertInit.load_bank`."""
        if self._staged is not None:
            return self._staged
        bank, expected = KnowledgeBank.load(self.bank), self.selection()
        made = bank.manifest.get("selection", {})
        chosen = [(layer["layer"], layer["experts"]) for layer in made.get("layers", [])]
        wanted = [(layer["layer"], layer["experts"]) for layer in expected["layers"]]
        manifest = bank.manifest
        made_with = (manifest.get("tucker"), bool(manifest.get("align_neurons")), manifest.get("grouping"))
        if chosen != wanted or made_with != (self.consolidator.describe(), self.align_neurons, None):
            raise ConfigError(
                [
                    f"{type(self).__name__}: the bank at {self.bank} was built from another selection, other Tucker "
                    "settings, another neuron alignment or grouped layers than this control's; drop `bank` (the "
                    "control builds its own) or rebuild it"
                ]
            )
        self._staged = bank
        return bank

    def source_ffn(self, num_target_layers: int) -> SourceFFN:
        bank = self.staged_bank() if self.bank is not None else self.build_bank()
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
        transfer: FFNTransfer = FFNTransfer(),
        trust_remote_code: bool = False,
        bank: str | None = None,
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
            transfer: the adaptation to the student, as `XpertInit.transfer`.
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
            bank: this control's bank, already built (by `xpert bench run`, once for every cell); it must hold
                this control's selection. None: built here, in memory.
        """
        super().__init__(source, analysis, n, consolidator, collapse, transfer, trust_remote_code, bank)
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
        transfer: FFNTransfer = FFNTransfer(),
        trust_remote_code: bool = False,
        bank: str | None = None,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            analysis: directory written by `xpert analyze` (routing counts and XPERT's selection).
            n: experts per layer (None: the same n as XPERT's selection).
            consolidator: Tucker settings (None: the defaults of `xpert extract`).
            collapse: expert weights of the collapse: `frequency` or `uniform`.
            transfer: the adaptation to the student, as `XpertInit.transfer`.
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
            bank: this control's bank, already built (by `xpert bench run`, once for every cell); it must hold
                this control's selection. None: built here, in memory.
        """
        super().__init__(source, analysis, n, consolidator, collapse, transfer, trust_remote_code, bank)

    def selector(self, n: int) -> ExpertSelector:
        return LeastFrequentSelector(n=n)


class SingleDomainExpertsInit(ReselectedBankInit):
    """The paper's Figure 5 ablation: XPERT's procedure on the experts one domain routes to most (the specialist
    selector), against XPERT's mixed-domain choice. One method per domain (e.g. `domain_code`, `domain_law`)."""

    def __init__(
        self,
        source: str,
        analysis: str,
        domain: str,
        n: int | None = None,
        consolidator: TuckerConsolidator | None = None,
        collapse: Collapse = "frequency",
        transfer: FFNTransfer = FFNTransfer(),
        trust_remote_code: bool = False,
        bank: str | None = None,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            analysis: directory written by `xpert analyze` (routing counts and XPERT's selection).
            domain: the analysed domain whose routing picks the experts.
            n: experts per layer (None: the same n as XPERT's selection).
            consolidator: Tucker settings (None: the defaults of `xpert extract`).
            collapse: expert weights of the collapse: `frequency` (in `domain`) or `uniform`.
            transfer: the adaptation to the student, as `XpertInit.transfer`.
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
            bank: this control's bank, already built (by `xpert bench run`, once for every cell); it must hold
                this control's selection. None: built here, in memory.
        """
        super().__init__(source, analysis, n, consolidator, collapse, transfer, trust_remote_code, bank)
        self.domain = domain

    def selector(self, n: int) -> ExpertSelector:
        return DomainSpecialistSelector(self.domain, n=n)

    def preflight(self) -> None:
        counts, _ = load_analysis(self.analysis)
        if self.domain not in counts.domains:
            problem = f"domain '{self.domain}' was not analysed (the analysis has: {', '.join(counts.domains)})"
            raise ConfigError([f"{type(self).__name__}: {problem}; pick one of them"])
        super().preflight()


class AlignedXpertInit(ReselectedBankInit):
    """XPERT with each selected expert's intermediate neurons permuted onto the layer's most heavily weighted expert
    before stacking (one Hungarian matching per expert on weight correlations, `xpert_pl.bank.align`): stacking and
    averaging unaligned experts mixes unrelated units. Otherwise XPERT: its own selection, Tucker settings, collapse
    and adaptation; the bank's manifest records the alignment and the mean matched correlation before and after."""

    align_neurons: ClassVar[bool] = True

    def __init__(
        self,
        source: str,
        analysis: str,
        consolidator: TuckerConsolidator | None = None,
        collapse: Collapse = "frequency",
        transfer: FFNTransfer = FFNTransfer(),
        trust_remote_code: bool = False,
        bank: str | None = None,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            analysis: directory written by `xpert analyze` (its selection is the one aligned and decomposed).
            consolidator: Tucker settings (None: the defaults of `xpert extract`); give XPERT's bank's settings.
            collapse: expert weights of the collapse: `frequency` (XPERT's) or `uniform`.
            transfer: the adaptation to the student, as `XpertInit.transfer`.
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
            bank: this method's aligned bank, already built (by `xpert bench run`, once for every cell); it must hold
                XPERT's selection, aligned. None: built here, in memory.
        """
        super().__init__(source, analysis, None, consolidator, collapse, transfer, trust_remote_code, bank)

    def selection(self) -> dict[str, Any]:
        """XPERT's own selection, as `xpert analyze` wrote it."""
        return load_analysis(self.analysis)[1].to_dict()

    def selector(self, n: int) -> ExpertSelector:
        raise NotImplementedError("AlignedXpertInit keeps the analysis's own selection (see `selection`)")


class FullExpertsInit(FFNTransferInit):
    """Control: XPERT's selected experts without the Tucker step: their weighted average."""

    artifacts: ClassVar[dict[str, Artifact]] = {"source": Artifact.SOURCE, "selection": Artifact.SELECTION}

    def __init__(
        self,
        source: str,
        selection: str,
        weighting: Literal["selection", "uniform"] = "selection",
        transfer: FFNTransfer = FFNTransfer(),
        trust_remote_code: bool = False,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            selection: `selection.json` written by `xpert analyze` (the experts XPERT decomposes).
            weighting: `selection` (its routing-frequency weights) or `uniform`.
            transfer: the adaptation to the student, as `XpertInit.transfer`.
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
        """
        if weighting not in ("selection", "uniform"):
            raise ValueError(f"weighting must be 'selection' or 'uniform', got '{weighting}'")
        super().__init__(transfer)
        self.source, self.selection, self.weighting = source, selection, weighting
        self.trust_remote_code = trust_remote_code

    def preflight(self) -> None:
        self._checked_selection()

    def _checked_selection(self) -> tuple[Selection, Any]:
        """The selection and the opened source, once the selection is shown to be made from that source."""
        if not Path(self.selection).is_file():
            raise FileNotFoundError(f"selection '{self.selection}' not found; run `xpert analyze` first")
        selection = Selection.load(self.selection)
        source = checked_source(self.source, selection.to_dict(), "selection", self.selection, self.trust_remote_code)
        return selection, source

    def source_ffn(self, num_target_layers: int) -> SourceFFN:
        selection, source = self._checked_selection()
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

    artifacts: ClassVar[dict[str, Artifact]] = {"source": Artifact.SOURCE, "analysis": Artifact.ANALYSIS}

    def __init__(
        self,
        source: str,
        analysis: str,
        transfer: FFNTransfer = FFNTransfer(rescale="none"),
        trust_remote_code: bool = False,
    ):
        """
        Args:
            source: the source MoE (local HF directory, read by key, or a hub id when online).
            analysis: directory written by `xpert analyze` (its routing counts rank the experts).
            transfer: the adaptation to the student, as `XpertInit.transfer`, but `rescale: none` by default (the
                expert as it is; `none` and `expert_norm` coincide for one expert).
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
        """
        super().__init__(transfer)
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
