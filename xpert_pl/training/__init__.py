"""Training: the LightningModule, its objectives (next-token, distillation) and its schedule."""

from xpert_pl.training.module import CausalLMModule
from xpert_pl.training.objectives import (
    DistillationObjective,
    NextTokenObjective,
    TrainingObjective,
    causal_lm_loss,
    distillation_kl,
)

__all__ = [
    "CausalLMModule",
    "DistillationObjective",
    "NextTokenObjective",
    "TrainingObjective",
    "causal_lm_loss",
    "distillation_kl",
]
