"""Export the trained model as a plain Hugging Face directory at the end of fit."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from xpert_pl.artifacts import atomic_directory, write_json

log = logging.getLogger(__name__)


class HFExport(L.Callback):
    """Writes `<log_dir>/<dirname>` with `save_pretrained` (safetensors) and the tokenizer, atomically."""

    def __init__(self, dirname: str = "hf"):
        """
        Args:
            dirname: sub-directory of the run's log dir to export into; loads with `from_pretrained`.
        """
        self.dirname = dirname

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask, before rank 0 alone writes
        full_state = _gathered_state_dict(trainer)  # a collective under FSDP
        if not trainer.is_global_zero or log_dir is None:
            return
        target = Path(log_dir) / self.dirname
        with atomic_directory(target, "hf-model") as tmp:
            pl_module.model.save_pretrained(tmp, state_dict=full_state, safe_serialization=True)
            tokenizer = getattr(trainer.datamodule, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            write_json(
                tmp / "xpert_export.json",
                {"global_step": trainer.global_step, "tokens_seen": getattr(pl_module, "tokens_seen", None)},
            )
        log.info("exported Hugging Face model to %s", target)


def _gathered_state_dict(trainer: L.Trainer) -> dict | None:
    """Under FSDP, the student's full (unsharded) state dict with Hugging Face keys, on rank 0; else None (the
    module's own parameters are complete)."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    # Every rank takes part; with state_dict_type "full" Lightning gathers onto rank 0's CPU.
    state = trainer.strategy.lightning_module_state_dict()
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
