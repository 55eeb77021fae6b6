"""XPERT initialisation: a dense student's FFN matrices from a knowledge bank (DESIGN.md sections 4-5)."""

from __future__ import annotations

from typing import Literal

import torch

from xpert_pl.bank.adapt import DepthStrategy, RescaleMode, collapse
from xpert_pl.bank.store import KnowledgeBank
from xpert_pl.experts import MATRICES
from xpert_pl.initializers.transfer import FFNTransfer, FFNTransferInit, NeuronSelection, SourceFFN, WiderFFN

Collapse = Literal["frequency", "uniform"]


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


class XpertInit(FFNTransferInit):
    """Initialises every FFN matrix of a dense SwiGLU student from a knowledge bank; nothing else is touched."""

    def __init__(
        self,
        bank: str,
        collapse: Collapse = "frequency",
        rescale: RescaleMode = "expert_norm",
        depth_strategy: DepthStrategy = "uniform",
        neuron_selection: NeuronSelection = "energy",
        wider_ffn: WiderFFN = "scratch",
    ):
        """
        Args:
            bank: directory of a knowledge bank (`bank.safetensors` + `manifest.json`) written by `xpert extract`.
            collapse: expert weights used to collapse the Tucker factors: `frequency` (the bank's routing-frequency
                weights) or `uniform` (1/n).
            rescale: Frobenius norm given to each transferred matrix: `expert_norm` (mean norm of the selected
                experts), `target_init` (norm of the student's freshly initialised values it overwrites), `none`.
            depth_strategy: student layer -> source layer: `uniform` (stride keeping first and last), `first`, or
                `grouped` (a bank extracted with `--group_layers` equal to the student's depth).
            neuron_selection: a narrower student FFN keeps the highest-`energy` neurons or `uniform`ly spaced ones.
            wider_ffn: a wider student FFN leaves the extra neurons at `scratch` init or `split`s neurons so the FFN
                keeps the collapsed matrices' function (Net2WiderNet).
        """
        if collapse not in ("frequency", "uniform"):
            raise ValueError(f"collapse must be 'frequency' or 'uniform', got '{collapse}'")
        super().__init__(FFNTransfer(rescale, depth_strategy, neuron_selection, wider_ffn))
        self.bank = bank
        self.collapse = collapse
        self._bank: KnowledgeBank | None = None

    def preflight(self) -> None:
        self.load_bank()  # validated (checksum, shapes, expert ids, weights) and kept for initialize

    def load_bank(self) -> KnowledgeBank:
        """The bank, loaded (and validated) on first use."""
        if self._bank is None:
            self._bank = KnowledgeBank.load(self.bank)
        return self._bank

    def source_ffn(self, num_target_layers: int) -> SourceFFN:
        bank = self.load_bank()
        source = collapse_bank(bank, self.collapse)
        source.description = {
            "bank": str(self.bank),
            # The model the bank was extracted from, as `xpert extract` recorded it (None for hand-built banks).
            "source": bank.manifest.get("source", {}).get("model"),
            "tucker": bank.manifest.get("tucker"),
            **source.description,
        }
        return source
