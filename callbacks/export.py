"""Export the trained model as a plain Hugging Face directory at the end of fit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L

from xpert_pl.artifacts import atomic_directory, write_json
from xpert_pl.errors import ConfigError
from xpert_pl.model_card import ModelFacts, provenance, read_facts, write_model_card
from xpert_pl.paths import path_component_problem

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


class HFExport(L.Callback):
    """Writes `<log_dir>/<dirname>` atomically: `save_pretrained` (safetensors), the tokenizer and a model card.

    The exported `config.json` and `generation_config.json` carry the run's tokenizer's bos/eos/pad ids, so plain
    `transformers` `generate()` stops at its EOS.
    """

    def __init__(self, dirname: str = "hf"):
        """
        Args:
            dirname: sub-directory of the run's log dir to export into; loads with `from_pretrained`.
        """
        if (problem := path_component_problem(dirname, "dirname")) is not None:
            raise ConfigError([f"{type(self).__name__}: {problem}"])
        self.dirname = dirname

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask, before rank 0 alone writes
        full_state = _gathered_state_dict(trainer)  # a collective under FSDP
        if not trainer.is_global_zero or log_dir is None:
            return
        target = Path(log_dir) / self.dirname
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        _set_special_token_ids(pl_module.model, tokenizer)
        facts = _model_facts(trainer, pl_module, full_state)
        with atomic_directory(target, "hf-model") as tmp:
            pl_module.model.save_pretrained(tmp, state_dict=full_state, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            write_model_card(tmp, facts)
            write_json(
                tmp / "xpert_export.json",
                {"global_step": trainer.global_step, "tokens_seen": getattr(pl_module, "tokens_seen", None)},
            )
        log.info("exported Hugging Face model to %s", target)


def _set_special_token_ids(model: PreTrainedModel, tokenizer: Any | None) -> None:
    """The tokenizer's ids into the model's configs; without a tokenizer they stay as they are, said in the log."""
    if tokenizer is None:
        log.warning(
            "the run has no tokenizer (trainer.datamodule.tokenizer): the export keeps the model's own bos/eos/pad "
            "ids (bos %s, eos %s, pad %s), which may not match the tokenizer it is used with",
            model.config.bos_token_id,
            model.config.eos_token_id,
            model.config.pad_token_id,
        )
        return
    from xpert_pl.models import set_special_token_ids

    ids = set_special_token_ids(model, tokenizer)
    log.info("export's special token ids from the run's tokenizer: %s", ids)


def _model_facts(trainer: L.Trainer, pl_module: L.LightningModule, full_state: dict | None) -> ModelFacts:
    """The model card's facts: method and provenance from the init report, tokens seen, last `val/loss`."""
    report = getattr(pl_module, "init_report", None)
    source, bank = provenance(report.details) if report is not None else (None, None)
    val_loss = trainer.callback_metrics.get("val/loss")
    tokens_seen = getattr(pl_module, "tokens_seen", None)
    return ModelFacts.of_model(
        pl_module.model,
        method=report.initializer if report is not None else "unknown",
        source=source,
        bank=bank,
        # A warm start (e.g. SFT of an exported student) names the method its source was made with.
        source_method=(read_facts(source) or {}).get("method") if source else None,
        tokens_seen=None if tokens_seen is None else int(tokens_seen),
        final_val_loss=None if val_loss is None else float(val_loss),
        # Under FSDP the module's own parameters are shards: count the gathered state instead.
        parameters=None if full_state is None else sum(v.numel() for v in full_state.values()),
    )


def _gathered_state_dict(trainer: L.Trainer) -> dict | None:
    """Under FSDP, the student's full (unsharded) state dict with Hugging Face keys, on rank 0; else None (the
    module's own parameters are complete)."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    # Every rank takes part; with state_dict_type "full" Lightning gathers onto rank 0's CPU.
    state = trainer.strategy.lightning_module_state_dict()
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
