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
        full_state = _gathered_state_dict(trainer, pl_module)  # a collective when sharded
        if not trainer.is_global_zero or log_dir is None:
            return
        target = Path(log_dir) / self.dirname
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        model = pl_module.model if full_state is None else _unsharded_model(pl_module.model, full_state)
        _set_special_token_ids(model, tokenizer)
        facts = _model_facts(trainer, pl_module, model, Path(log_dir))
        with atomic_directory(target, "hf-model") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
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


def _model_facts(trainer: L.Trainer, pl_module: L.LightningModule, model: PreTrainedModel, log_dir: Path) -> ModelFacts:
    """The model card's facts: method and provenance from the init report, tokens seen, last `val/loss`."""
    report = getattr(pl_module, "init_report", None)
    source, bank = provenance(report.details) if report is not None else (None, None)
    val_loss = _last_val_loss(trainer, log_dir)
    tokens_seen = getattr(pl_module, "tokens_seen", None)
    return ModelFacts.of_model(
        model,
        method=report.initializer if report is not None else "unknown",
        source=source,
        bank=bank,
        # A warm start (e.g. SFT of an exported student) names the method its source was made with.
        source_method=(read_facts(source) or {}).get("method") if source else None,
        tokens_seen=None if tokens_seen is None else int(tokens_seen),
        final_val_loss=val_loss,
    )


def _last_val_loss(trainer: L.Trainer, log_dir: Path) -> float | None:
    """`val/loss` as last computed, else as last logged: a run resumed at its last step validates no more."""
    from xpert_pl.layout import METRICS_FILE, last_validation

    value = trainer.callback_metrics.get("val/loss")
    # log_dir, not trainer.log_dir: that is a collective under DDP, and rank 0 alone may not ask.
    return float(value) if value is not None else last_validation(log_dir / METRICS_FILE).get("val/loss")


def _gathered_state_dict(trainer: L.Trainer, pl_module: L.LightningModule) -> dict | None:
    """Under FSDP or FSDP2, the student's full (unsharded) state dict with Hugging Face keys, on rank 0 (empty on
    the others); else None (the module's own parameters are complete). A collective: every rank must call it."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if isinstance(trainer.strategy, ModelParallelStrategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Gathers each sharded tensor in turn onto rank 0's CPU (whatever the strategy's checkpoint format).
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(pl_module.model, options=options)
    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    # Every rank takes part; with state_dict_type "full" Lightning gathers onto rank 0's CPU.
    state = trainer.strategy.lightning_module_state_dict()
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def _unsharded_model(sharded: PreTrainedModel, full_state: dict) -> PreTrainedModel:
    """A plain model of the sharded one's class holding the gathered tensors (not copied), for saving only (its
    non-persistent buffers stay on the meta device): `save_pretrained` and the model card see the model's own
    class, not FSDP2's `FSDP<name>` subclass, whose name would land in config.json's `architectures`."""
    import torch
    from torch.distributed.fsdp import FSDPModule
    from transformers import PreTrainedModel

    cls = next(c for c in type(sharded).__mro__ if issubclass(c, PreTrainedModel) and not issubclass(c, FSDPModule))
    with torch.device("meta"):
        model = cls(sharded.config)
    model.load_state_dict(full_state, strict=True, assign=True)
    model.tie_weights()
    return model.eval()
