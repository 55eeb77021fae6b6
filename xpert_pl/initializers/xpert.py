"""XPERT initialisation: a dense student's FFN matrices from a knowledge bank (DESIGN.md sections 4-5)."""

from __future__ import annotations

from typing import ClassVar

from xpert_pl.adaptation import SourceFFN
from xpert_pl.bank.store import KnowledgeBank
from xpert_pl.initializers.shared import Collapse, collapse_bank
from xpert_pl.initializers.transfer import FFNTransfer, FFNTransferInit
from xpert_pl.layout import Artifact


class XpertInit(FFNTransferInit):
    """Initialises every FFN matrix of a dense SwiGLU student from a knowledge bank; nothing else is touched."""

    artifacts: ClassVar[dict[str, Artifact]] = {"bank": Artifact.BANK}

    def __init__(self, bank: str, collapse: Collapse = "frequency", transfer: FFNTransfer = FFNTransfer()):
        """
        Args:
            bank: directory of a knowledge bank (`bank.safetensors` + `manifest.json`) written by `xpert extract`.
            collapse: expert weights used to collapse the Tucker factors: `frequency` (the bank's routing-frequency
                weights) or `uniform` (1/n).
            transfer: how the collapsed matrices are fitted into the student (rescale, depth_strategy,
                neuron_selection, wider_ffn; see `FFNTransfer`).
        """
        if collapse not in ("frequency", "uniform"):
            raise ValueError(f"collapse must be 'frequency' or 'uniform', got '{collapse}'")
        super().__init__(transfer)
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
