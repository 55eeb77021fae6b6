"""Training: the LightningModule and its schedule."""

from xpert_pl.training.module import CausalLMModule, causal_lm_loss

__all__ = ["CausalLMModule", "causal_lm_loss"]
