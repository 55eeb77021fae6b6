"""The options of fitting source-shaped dense FFN matrices into a student (`FFNTransfer`) and the base of every
expert-based initializer (`FFNTransferInit`); the adaptation rules themselves live in `xpert_pl.adaptation`.

Every expert-based initializer produces a `SourceFFN` (one dense gate/up/down triple per source layer, in the
source's shape) and hands it to `FFNTransfer`, which applies the kit's documented adaptation rules: depth map,
intermediate-neuron selection, hidden-size selection or spreading, rescaling. The initializers differ only in
how they make the dense matrices, so the controls of an ablation differ from XPERT in exactly one thing.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Any, get_args

from torch import nn
from transformers import PreTrainedModel

from xpert_pl.adaptation import (
    DepthStrategy,
    NeuronSelection,
    RescaleMode,
    SourceFFN,
    WiderFFN,
    fit_ffn,
    student_mlps,
)
from xpert_pl.initializers.base import Initializer, InitReport


@dataclass(frozen=True)
class FFNTransfer:
    """How dense source matrices are fitted into a student's FFN layers: the adaptation options shared by every
    expert-based initializer (its `transfer` argument; e.g. `transfer: {rescale: none, depth_strategy: grouped}`).

    Frozen, so one instance can be a method's default argument.

    Attributes:
        rescale: Frobenius norm given to each transferred matrix: `expert_norm` (the mean norm of the experts it
            came from, applied to the whole source matrix before slicing), `target_init` (the norm of the
            student's fresh values it overwrites), or `none`.
        depth_strategy: student layer -> source layer: `uniform` stride (keeping the first and last layers),
            the `first` L_t layers, or `grouped` (one bank layer group per student layer, `xpert extract
            --group_layers`).
        neuron_selection: a narrower FFN keeps the highest-`energy` neurons or `uniform`ly spaced ones (Weight
            Selection); always the same indices in gate, up and down.
        wider_ffn: a wider FFN leaves the extra neurons at `scratch` init, or `split`s source neurons into
            copies sharing the down column (Net2WiderNet), so the FFN computes the source matrices' function.
        seed: seed of the random shares of `split`.
    """

    rescale: RescaleMode = "expert_norm"
    depth_strategy: DepthStrategy = "uniform"
    neuron_selection: NeuronSelection = "energy"
    wider_ffn: WiderFFN = "scratch"
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {
            "rescale": get_args(RescaleMode),
            "depth_strategy": get_args(DepthStrategy),
            "neuron_selection": get_args(NeuronSelection),
            "wider_ffn": get_args(WiderFFN),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got '{getattr(self, name)}'")

    def apply(self, model: nn.Module, source: SourceFFN) -> tuple[list[str], dict[str, Any]]:
        """Overwrite the student's gate/up/down weights (see `xpert_pl.adaptation.fit_ffn`); returns the parameter
        names set and a report."""
        return fit_ffn(
            model,
            source,
            rescale_mode=self.rescale,
            depth_strategy=self.depth_strategy,
            neuron_selection=self.neuron_selection,
            wider_ffn=self.wider_ffn,
            seed=self.seed,
        )


class FFNTransferInit(Initializer):
    """An initializer that makes dense source-shaped FFN matrices and fits them into every student layer.

    Subclasses implement `source_ffn` and take a `transfer: FFNTransfer = <the method's default>` argument; the
    adaptation and the report are shared, so two methods differ only in where their matrices come from.
    """

    def __init__(self, transfer: FFNTransfer):
        if not isinstance(transfer, FFNTransfer):  # e.g. a dict from Python code; the CLI always builds one
            raise TypeError(f"transfer must be an FFNTransfer, got {type(transfer).__name__}")
        self.transfer = transfer

    @property
    def name(self) -> str:
        """The report's name of the method: the class name without `Init`, in snake case."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__.removesuffix("Init")).lower()

    @abc.abstractmethod
    def source_ffn(self, num_target_layers: int) -> SourceFFN:
        """The dense matrices to transfer (a method may build them for the student's depth)."""

    def initialize(self, model: PreTrainedModel) -> InitReport:
        """Overwrite every layer's gate/up/down weights; report the parameters, the mapping and the norms."""
        num_layers = len(student_mlps(model))  # an unsupported student fails before any source is read
        source = self.source_ffn(num_layers)
        set_parameters, details = self.transfer.apply(model, source)
        return InitReport(
            initializer=self.name, set_parameters=set_parameters, details={**source.description, **details}
        )
