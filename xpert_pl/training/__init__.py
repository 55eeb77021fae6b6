"""Training: the LightningModule, its objectives (next-token, distillation), its schedule and sharding."""

from xpert_pl.training.module import CausalLMModule
from xpert_pl.training.objectives import (
    DistillationObjective,
    NextTokenObjective,
    TrainingObjective,
    causal_lm_loss,
    distillation_kl,
)
from xpert_pl.training.sharding import FSDP2Strategy

__all__ = [
    "CausalLMModule",
    "DistillationObjective",
    "FSDP2Strategy",
    "NextTokenObjective",
    "TrainingObjective",
    "causal_lm_loss",
    "distillation_kl",
]
