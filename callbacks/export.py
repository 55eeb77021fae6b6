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
        if not trainer.is_global_zero or log_dir is None:
            return
        target = Path(log_dir) / self.dirname
        with atomic_directory(target) as tmp:
            pl_module.model.save_pretrained(tmp, safe_serialization=True)
            tokenizer = getattr(trainer.datamodule, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            write_json(
                tmp / "xpert_export.json",
                {"global_step": trainer.global_step, "tokens_seen": getattr(pl_module, "tokens_seen", None)},
            )
        log.info("exported Hugging Face model to %s", target)
