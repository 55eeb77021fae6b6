"""Controls that keep XPERT's weight statistics but not its learned function (knowledge vs statistics).

A better start from expert weights may come from what the experts know, or only from their scale and spectrum.
Each control runs XPERT first, then destroys one thing while keeping another:

- `ShuffledXpertInit`: the transferred intermediate neurons permuted independently in gate, up and down (every
  row keeps its values; the learned function is gone).
- `SpectrumMatchedInit`: each FFN matrix replaced by random orthogonal factors with XPERT's singular values.
- `NormMatchedScratchInit`: the student's scratch FFN matrices rescaled to XPERT's Frobenius norms.
- `UntrainedSourceInit`: the whole XPERT procedure (analysis, selection, Tucker, adaptation) run on an untrained
  copy of the source (`xpert untrained-source`): the procedure without the knowledge.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from xpert_pl.adaptation import PROJ, student_mlps
from xpert_pl.bank.store import KnowledgeBank
from xpert_pl.initializers.base import InitReport
from xpert_pl.initializers.shared import Collapse
from xpert_pl.initializers.transfer import FFNTransfer
from xpert_pl.initializers.xpert import XpertInit
from xpert_pl.layout import Artifact
from xpert_pl.models import UNTRAINED_MARKER
from xpert_pl.provenance import check_same_source, recorded_source, source_fingerprint
from xpert_pl.sources.checkpoint import has_safetensors_weights


def random_orthogonal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random (rows x cols) matrix with orthonormal columns (cols <= rows), float64."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # the sign fix makes the distribution Haar, not QR-biased


class XpertStatisticsControl(XpertInit):
    """XPERT, then a seeded transformation of the FFN weights it produced (see the module docstring)."""

    def __init__(
        self,
        bank: str,
        seed: int = 0,
        collapse: Collapse = "frequency",
        transfer: FFNTransfer = FFNTransfer(),
    ):
        """
        Args:
            bank: the knowledge bank XPERT would use (`xpert extract` output).
            seed: seed of the control's randomness.
            collapse: as `XpertInit.collapse`.
            transfer: the adaptation to the student, as `XpertInit.transfer`.
        """
        super().__init__(bank, collapse, transfer)
        self.seed = seed

    @abc.abstractmethod
    def transform(self, mlp: nn.Module, scratch: dict[str, torch.Tensor], neurons: int, gen: torch.Generator):
        """Change `mlp`'s XPERT weights in place; returns a JSON-able note for the report."""

    @torch.no_grad()
    def initialize(self, model: PreTrainedModel) -> InitReport:
        mlps = student_mlps(model)
        scratch = [{m: getattr(mlp, p).weight.detach().clone() for m, p in PROJ.items()} for mlp in mlps]
        report = super().initialize(model)
        generator = torch.Generator().manual_seed(self.seed)
        notes = [
            self.transform(mlp, scratch[j], report.details["layers"][j]["neurons_set"], generator)
            for j, mlp in enumerate(mlps)
        ]
        details = {**report.details, "control": {"of": "xpert", "seed": self.seed, "layers": notes}}
        return InitReport(initializer=self.name, set_parameters=report.set_parameters, details=details)


class ShuffledXpertInit(XpertStatisticsControl):
    """Control: XPERT's neurons permuted independently in gate, up and down (same values, no function)."""

    def transform(self, mlp, scratch, neurons: int, gen: torch.Generator) -> dict[str, Any]:
        perms = {m: torch.randperm(neurons, generator=gen) for m in PROJ}
        for m, proj in PROJ.items():
            weight = getattr(mlp, proj).weight
            if m == "down":  # a neuron of down is a column
                weight[:, :neurons] = weight[:, :neurons][:, perms[m]].clone()
            else:
                weight[:neurons] = weight[:neurons][perms[m]].clone()
        return {"neurons_permuted": neurons}


class SpectrumMatchedInit(XpertStatisticsControl):
    """Control: random orthogonal factors with XPERT's singular values (same spectrum, no learned directions)."""

    def transform(self, mlp, scratch, neurons: int, gen: torch.Generator) -> dict[str, Any]:
        for proj in PROJ.values():
            weight = getattr(mlp, proj).weight
            values = torch.linalg.svdvals(weight.double())
            rows, cols = weight.shape
            left, right = random_orthogonal(rows, len(values), gen), random_orthogonal(cols, len(values), gen)
            weight.copy_((left * values) @ right.T)
        return {"singular_values": "XPERT's", "factors": "Haar-random orthogonal"}


class NormMatchedScratchInit(XpertStatisticsControl):
    """Control: the scratch FFN matrices, each rescaled to the Frobenius norm XPERT gives it."""

    def transform(self, mlp, scratch, neurons: int, gen: torch.Generator) -> dict[str, Any]:
        norms = {}
        for m, proj in PROJ.items():
            weight = getattr(mlp, proj).weight
            norms[m] = float(torch.linalg.matrix_norm(weight.double()))
            fresh = scratch[m].double()
            weight.copy_(fresh * (norms[m] / float(torch.linalg.matrix_norm(fresh))))
        return {"xpert_norms": norms}


class UntrainedSourceInit(XpertInit):
    """Control: XPERT from a bank built on an untrained copy of the source (the procedure without knowledge)."""

    artifacts: ClassVar[dict[str, Artifact]] = {"untrained_bank": Artifact.UNTRAINED_BANK}

    def __init__(
        self,
        untrained_bank: str,
        collapse: Collapse = "frequency",
        transfer: FFNTransfer = FFNTransfer(),
    ):
        """
        Args:
            untrained_bank: a bank made by `xpert untrained-source`, then `xpert analyze` and `xpert extract` on the
                untrained copy; a bank of a trained source is refused.
            collapse: as `XpertInit.collapse`.
            transfer: the adaptation to the student, as `XpertInit.transfer`.
        """
        super().__init__(untrained_bank, collapse, transfer)

    def load_bank(self) -> KnowledgeBank:
        bank = super().load_bank()
        model = str(bank.manifest.get("source", {}).get("model", ""))
        if not model or not (Path(model) / UNTRAINED_MARKER).is_file():
            raise ValueError(
                f"{self.bank} was not built from an untrained copy (its source '{model}' has no {UNTRAINED_MARKER}); "
                "run `xpert untrained-source`, then `xpert analyze` and `xpert extract` on the copy"
            )
        record = recorded_source(bank.manifest)
        if record is not None and has_safetensors_weights(model):  # and made from that very copy
            check_same_source(record, "bank", self.bank, model, source_fingerprint(model))
        return bank
