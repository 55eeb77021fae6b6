"""The one LightningModule: causal-LM training of a Hugging Face model with a pluggable initializer and objective."""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from xpert_pl.artifacts import write_json
from xpert_pl.initializers import Initializer, InitReport, ScratchInit
from xpert_pl.model_card import count_parameters
from xpert_pl.models import ModelBuilder
from xpert_pl.training.flops import training_flops_per_token
from xpert_pl.training.objectives import IGNORE_INDEX, NextTokenObjective, TrainingObjective, causal_lm_loss
from xpert_pl.training.schedule import warmup_cosine
from xpert_pl.training.warm_start import load_warm_start

log = logging.getLogger(__name__)

__all__ = ["IGNORE_INDEX", "CausalLMModule", "causal_lm_loss"]


class CausalLMModule(L.LightningModule):
    """Trains a causal LM (source MoE or dense student) with AdamW and a warm-up + cosine schedule."""

    def __init__(
        self,
        model: ModelBuilder,
        initializer: Initializer | None = None,
        objective: TrainingObjective | None = None,
        vocab_size: int | None = None,
        val_domains: list[str] | None = None,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        init_checkpoint: str | None = None,
        compile: bool = False,
    ):
        """
        Args:
            model: what to train: `xpert_pl.models.DenseStudent`, `OlmoeSource` or `PretrainedCausalLM`.
            initializer: how the fresh model's weights are set before training (default `ScratchInit`);
                swap the class to switch method (e.g. `xpert_pl.initializers.XpertInit`).
            objective: what a training step minimises (default `xpert_pl.training.NextTokenObjective`, next-token
                cross-entropy); `xpert_pl.training.DistillationObjective` distils from a teacher. Validation
                always reports next-token cross-entropy, so runs with different objectives compare.
            vocab_size: linked from the data module's tokenizer; do not set by hand.
            val_domains: linked from the data module; names of the validation dataloaders, in order.
            learning_rate: peak AdamW learning rate.
            weight_decay: AdamW weight decay, applied to matrices only (not norms, biases).
            betas: AdamW betas.
            warmup_steps: linear warm-up steps before cosine decay.
            min_lr_ratio: final learning rate as a fraction of the peak.
            init_checkpoint: warm start: load weights from a Hugging Face model directory or a Lightning
                `.ckpt` before training (optimizer and step start fresh). Not the same as resuming
                (`--ckpt_path`), and the two cannot be combined.
            compile: compile the model's forward with `torch.compile` (in place, so checkpoint and export keys do
                not change); for GPU runs (configs/gpu/compile.yaml).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["model", "initializer", "objective"])
        self.model_builder = model
        self.initializer = initializer or ScratchInit()
        # A plain object, not an nn.Module: a teacher it holds stays out of state_dict, optimizer and DDP.
        self.objective = objective or NextTokenObjective()
        self.val_domains = list(val_domains or [])
        self.model: nn.Module | None = None
        self.init_report: InitReport | None = None
        self.val_loss = MeanMetric()
        self.val_loss_by_domain = nn.ModuleDict({name: MeanMetric() for name in self.val_domains})
        self.test_loss = MeanMetric()
        self.test_loss_by_set = nn.ModuleDict()
        self._last_step_time: float | None = None
        self.tokens_seen = 0
        # Cumulative compute of this run (resumed runs continue it); per-token rates are set at fit start.
        self.flops = {"student": 0, "teacher": 0}
        self._flops_per_token = {"student": 0, "teacher": 0}

    def preflight(self) -> None:
        """Check what the initializer (or warm start) and the objective will read, before any data work."""
        if self.hparams.init_checkpoint:
            from xpert_pl.training.warm_start import check_warm_start

            check_warm_start(self.hparams.init_checkpoint, self.model_builder)
        else:
            self.initializer.preflight()
        self.objective.preflight(self.hparams.vocab_size)

    def configure_model(self) -> None:
        """Build the HF model, apply the initializer (or warm start), then shard it under FSDP2; idempotent."""
        if self.model is not None:
            return
        self.model = self.model_builder.build(self.hparams.vocab_size)
        if self.hparams.init_checkpoint:
            self.init_report = load_warm_start(self.model, self.hparams.init_checkpoint)
        else:
            self.init_report = self.initializer.initialize(self.model)
        if self.device_mesh is not None:  # FSDP2: shard only now, so the initializer wrote full, real weights
            from xpert_pl.training.sharding import shard_model

            shard_model(self.model, self.device_mesh, self._trainer.strategy if self._trainer else None)
        if self.hparams.compile:
            self.model.compile()
        log.info(
            "built %s with %s parameters; %s set %d tensors",
            type(self.model).__name__,
            f"{count_parameters(self.model):,}",
            self.init_report.initializer,
            len(self.init_report.set_parameters),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        labels = batch.get("labels", batch["input_ids"])
        out = self(batch["input_ids"], batch.get("attention_mask"))
        lm_loss, n_tokens = causal_lm_loss(out.logits, labels)
        aux = getattr(out, "aux_loss", None)
        return lm_loss, n_tokens, aux

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch["input_ids"], batch.get("attention_mask"))
        loss, metrics = self.objective.loss(out, batch)
        tokens = batch["input_ids"].numel() * self.trainer.world_size
        self.tokens_seen += tokens
        for part, per_token in self._flops_per_token.items():
            self.flops[part] += per_token * tokens
        progress = {"train/loss": metrics.pop("loss"), "train/ppl": metrics.pop("ppl")}
        self.log_dict({**progress, "train/tokens": float(self.tokens_seen)}, on_step=True, prog_bar=True)
        extra = {f"train/{name}": value for name, value in metrics.items()}
        extra.update({f"train/{part}_flops": float(count) for part, count in self.flops.items()})
        self.log_dict(extra, on_step=True)
        self._log_throughput(batch["input_ids"].numel())
        return loss

    def _log_throughput(self, tokens_in_step: int) -> None:
        # Wall time between consecutive steps includes data loading and the optimizer: what a user waits for.
        now = time.perf_counter()
        if self._last_step_time is not None:
            rate = tokens_in_step * self.trainer.world_size / max(now - self._last_step_time, 1e-9)
            self.log("train/tokens_per_s", rate, on_step=True)
        self._last_step_time = now
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update_eval_losses(batch, dataloader_idx, self.val_loss, self.val_loss_by_domain)

    def on_validation_epoch_end(self) -> None:
        overall = self._log_eval_losses("val", self.val_loss, self.val_loss_by_domain)
        self.log("val_loss", overall, prog_bar=True, add_dataloader_idx=False)

    def on_test_start(self) -> None:
        # Test sets are named by the data module (e.g. the SFT module's `test_names`), one loader each.
        names = list(getattr(self.trainer.datamodule, "test_names", None) or [])
        self.test_loss_by_set = nn.ModuleDict({name: MeanMetric() for name in names}).to(self.device)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update_eval_losses(batch, dataloader_idx, self.test_loss, self.test_loss_by_set)

    def on_test_epoch_end(self) -> None:
        self._log_eval_losses("test", self.test_loss, self.test_loss_by_set)

    def _update_eval_losses(self, batch, dataloader_idx: int, overall: MeanMetric, by_name: nn.ModuleDict) -> None:
        """Token-weighted next-token loss of a batch, overall and for the loader's named set."""
        lm_loss, n_tokens, _ = self._losses(batch)
        overall.update(lm_loss, weight=n_tokens)
        names = list(by_name)
        if dataloader_idx < len(names):
            by_name[names[dataloader_idx]].update(lm_loss, weight=n_tokens)

    def _log_eval_losses(self, stage: str, overall: MeanMetric, by_name: nn.ModuleDict) -> torch.Tensor:
        """Log `<stage>/loss`, `<stage>/ppl` and `<stage>/loss/<name>`, reset the metrics, return the overall loss."""
        value = overall.compute()
        metrics = {f"{stage}/loss": value, f"{stage}/ppl": torch.exp(value)}
        for name, metric in by_name.items():
            if metric.update_count:
                metrics[f"{stage}/loss/{name}"] = metric.compute()
            metric.reset()
        overall.reset()
        self.log_dict(metrics, prog_bar=False, add_dataloader_idx=False)
        return value

    def on_train_epoch_start(self) -> None:
        self._last_step_time = None

    def on_fit_start(self) -> None:
        # The model is built and on its device here, on every rank: each rank loads its own teacher, if any.
        self.objective.setup(self.model, self.device)
        self._flops_per_token = {
            "student": training_flops_per_token(self.model),
            "teacher": self.objective.teacher_flops_per_token,
        }
        # Without a logger, log_dir falls back to the working directory: write nothing there.
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if self.trainer.is_global_zero and log_dir:
            if self.init_report is not None:
                write_json(Path(log_dir) / "init_report.json", self.init_report.to_dict())
            write_json(Path(log_dir) / "objective.json", self.objective.describe())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["flops"] = dict(self.flops)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        self.flops = {part: int(checkpoint.get("flops", {}).get(part, 0)) for part in ("student", "teacher")}

    def configure_optimizers(self) -> dict[str, Any]:
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.learning_rate,
            betas=tuple(self.hparams.betas),
            fused=self.device.type == "cuda",  # one kernel per step on GPUs; CPUs keep the default
        )
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else 10_000
        schedule = partial(
            warmup_cosine,
            warmup_steps=self.hparams.warmup_steps,
            total_steps=total,
            min_lr_ratio=self.hparams.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
