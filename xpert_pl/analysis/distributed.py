"""Routing statistics on several devices through Lightning: `trainer.predict` shards the batches, ranks all-reduce.

Each rank runs its shard of every domain with an `ExpertActivationCounter` attached; at the end of the predict
epoch the accumulators are summed with `torch.distributed` (through the strategy's `reduce`), so every rank, rank 0
included, holds the totals. Lightning's predict sampler (`UnrepeatedDistributedSamplerWrapper`) deals items
round-robin to ranks without padding, so no item is counted twice.

Token budget: rank r of W gets `budget // W` tokens, plus one when `r < budget % W`, taken from the start of its own
shard in order. The total is exactly the budget when every shard has enough tokens. The tokens counted equal the
single-process ones when the per-rank budgets cover whole items in round-robin order (e.g. 1 item = 1 batch of B
full rows of T tokens and a budget that is a multiple of W*B*T); otherwise it is a different sample of the same size.

Launch: a script run by `torchrun` or by Lightning's own `strategy="ddp"` (which starts one copy of the script per
device). Spawning strategies (`ddp_spawn`) are refused: their workers' results do not come back to the caller.
Every rank must hold the same model; this is checked with the model fingerprint.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from xpert_pl.analysis.counter import (
    ActivationCounts,
    ExpertActivationCounter,
    Precision,
    check_budget,
    forward_extras,
    precision_context,
    run_batch,
    truncate_batch,
)

DomainData = DataLoader | Dataset | Sequence[dict[str, torch.Tensor]]


def rank_budget(total: int | None, rank: int, world_size: int) -> int | None:
    """Rank `rank`'s share of a token budget: `total // world_size`, plus one on the `total % world_size` low ranks."""
    if total is None:
        return None
    return total // world_size + (1 if rank < total % world_size else 0)


class ActivationCountingModule(L.LightningModule):
    """Wraps a Hugging Face MoE so that `trainer.predict` counts its routing, one dataloader per domain."""

    def __init__(
        self,
        model: nn.Module,
        domains: list[str],
        max_tokens_per_domain: int | None = None,
        precision: Precision = "auto",
    ) -> None:
        """
        Args:
            model: a supported Hugging Face MoE causal LM (the same weights on every rank).
            domains: domain names, in the order of the predict dataloaders.
            max_tokens_per_domain: global budget per domain, split over ranks by `rank_budget`.
            precision: compute dtype (see `xpert_pl.analysis.counter.resolve_precision`).
        """
        super().__init__()
        check_budget(max_tokens_per_domain)
        self.model = model
        self.domains = list(domains)
        self.max_tokens_per_domain = max_tokens_per_domain
        self.precision_name = precision
        self.counts: ActivationCounts | None = None
        self._counter: ExpertActivationCounter | None = None
        self._seen = [0] * len(self.domains)
        self._extra: dict[str, Any] = {}

    def on_predict_start(self) -> None:
        """Check every rank holds the same model, then attach the counter (after the model reached its device)."""
        self._check_same_model()
        self._counter = ExpertActivationCounter(self.model, self.domains)
        self._seen = [0] * len(self.domains)
        self._extra = forward_extras(self.model)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Count one batch of domain `dataloader_idx`, truncated to what is left of this rank's budget."""
        if self._counter is None:
            raise RuntimeError("the counter is attached in on_predict_start; run this module with trainer.predict")
        budget = rank_budget(self.max_tokens_per_domain, self.global_rank, self.trainer.world_size)
        left = None if budget is None else budget - self._seen[dataloader_idx]
        if left is not None and left <= 0:
            return  # this rank's budget is spent; the rest of the shard is only iterated
        ids, mask = truncate_batch(batch, left)
        if ids is None:
            return
        self._counter.set_domain(self.domains[dataloader_idx])
        with torch.inference_mode(), precision_context(self.model, self.precision_name):
            self._seen[dataloader_idx] += run_batch(self.model, self._counter, ids, mask, self.device, self._extra)

    def on_predict_epoch_end(self) -> None:
        """Sum the accumulators over ranks; every rank keeps the totals in `self.counts`."""
        if self._counter is None:
            raise RuntimeError("on_predict_start did not run")
        for tensor in self._counter.state_tensors():
            tensor.copy_(self.trainer.strategy.reduce(tensor, reduce_op="sum"))
        self.counts = self._counter.result()

    def on_predict_end(self) -> None:
        """Remove the hooks, so the model is left as it was given."""
        if self._counter is not None:
            self._counter.remove()
            self._counter = None

    def _check_same_model(self) -> None:
        from xpert_pl.analysis.run import model_fingerprint

        # 15 hex digits fit an int64; a mismatch on any rank makes every rank raise, so none waits forever.
        mine = torch.tensor([int(model_fingerprint(self.model)[:15], 16)], device=self.device)
        fingerprints = self.all_gather(mine).reshape(-1)
        if bool((fingerprints != mine).any()):
            raise ValueError(f"ranks hold different models (fingerprints {fingerprints.tolist()}); load the same one")


def count_activations_distributed(
    model: nn.Module,
    data_by_domain: dict[str, DomainData],
    trainer_kwargs: dict[str, Any] | None = None,
    max_tokens_per_domain: int | None = None,
    precision: Precision = "auto",
) -> ActivationCounts:
    """Routing statistics of `model` over each domain, the batches shared out over the Trainer's devices.

    Args:
        model: a supported Hugging Face MoE causal LM (every rank must load the same weights).
        data_by_domain: per domain, a DataLoader, a map-style Dataset of ready batches, or a list of batches
            (`input_ids` (B, T), optional `attention_mask`); whole batches are dealt to ranks, so a rank runs
            exactly the forwards a single process would.
        trainer_kwargs: arguments of `lightning.Trainer` (e.g. `accelerator`, `devices`, `strategy="ddp"`);
            logging, checkpointing and the model summary are off unless given.
        max_tokens_per_domain: global token budget per domain, split over ranks (see the module docstring).
        precision: compute dtype; statistics accumulate in int64/float64 regardless.

    Returns:
        The totals over all ranks, on every rank.

    Raises:
        ValueError: a spawning strategy, or a streamed (iterable) domain on more than one device.
    """
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False, **(trainer_kwargs or {})}
    trainer = L.Trainer(**kwargs)
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        raise ValueError(
            "spawning strategies (ddp_spawn, ddp_fork, ...) do not return the counts of their workers; "
            "use strategy='ddp' (or launch with torchrun)"
        )
    loaders = [_as_loader(name, data, trainer.world_size) for name, data in data_by_domain.items()]
    module = ActivationCountingModule(model, list(data_by_domain), max_tokens_per_domain, precision)
    with warnings.catch_warnings():
        # predict_step returns nothing on purpose: the statistics live in the module, not in predictions.
        warnings.filterwarnings("ignore", message=".*predict returned None.*")
        trainer.predict(module, dataloaders=loaders, return_predictions=False)
    if module.counts is None:
        raise RuntimeError("the predict loop ended without counts")
    return module.counts


def _as_loader(name: str, data: DomainData, world_size: int) -> DataLoader:
    """A DataLoader yielding whole batches; Lightning adds the distributed sampler to it."""
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=None, shuffle=False)
    if world_size > 1 and isinstance(loader.dataset, IterableDataset):
        raise ValueError(
            f"domain '{name}' is an iterable (streamed) dataset, which cannot be split over {world_size} devices; "
            "use a map-style dataset (streaming off) or one device"
        )
    return loader
