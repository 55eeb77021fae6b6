"""The scratch baseline: the model keeps its own Hugging Face initialisation."""

from __future__ import annotations

from transformers import PreTrainedModel

from xpert_pl.initializers.base import Initializer, InitReport


class ScratchInit(Initializer):
    """Leaves every parameter at the model's own Hugging Face initialisation (the baseline)."""

    def initialize(self, model: PreTrainedModel) -> InitReport:
        std = getattr(model.config, "initializer_range", None)
        return InitReport(
            initializer="scratch",
            set_parameters=[],
            details={
                "note": "no parameter set; the model keeps its Hugging Face initialisation",
                "initializer_range": std,
            },
        )
