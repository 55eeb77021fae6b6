"""A callback that records what a (sharded or not) run's model starts from and its global loss per step."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class Probe(L.Callback):
    """Writes `<out>/init.safetensors` (the full weights after configure_model, gathered if sharded),
    `<out>/losses.json` (each step's loss averaged over the processes: the loss of the global batch) and
    `<out>/run.json` (world size; how many parameters are sharded DTensors and how many rows rank 0 holds)."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.losses: list[float] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(pl_module.model, options=options)  # a collective when sharded
        if trainer.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in state.items()}, self.out / "init.safetensors")
            (self.out / "run.json").write_text(json.dumps(_layout(trainer, pl_module.model)))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, *args) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach().clone(), reduce_op="mean")
        self.losses.append(float(loss))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            (self.out / "losses.json").write_text(json.dumps(self.losses))


class DesyncSeed(L.Callback):
    """Reseeds every rank but 0 before the model is built, so only rank 0's scratch weights match a 1-process
    run's: the sharded run must still start from rank 0's weights (they are broadcast, not assumed equal)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import torch

        if trainer.global_rank != 0:
            torch.manual_seed(1_000 + trainer.global_rank)


def _layout(trainer: L.Trainer, model) -> dict:
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    local = [p.to_local() if isinstance(p, DTensor) else p for p in params]
    return {
        "world_size": trainer.world_size,
        "parameters": len(params),
        "dtensors": sum(isinstance(p, DTensor) for p in params),
        "gradient_checkpointing": bool(getattr(model, "is_activation_checkpointing", False)),
        "local_elements": sum(t.numel() for t in local),
        "full_elements": sum(p.numel() for p in params),
    }
