"""Sharded (FSDP2) training: a strategy that shards over every process, and the sharding the module applies.

Under `FSDP2Strategy` (or Lightning's `ModelParallelStrategy` with tensor_parallel_size 1) the module builds the
full model on every rank, runs its initializer (or warm start) on those full, materialised weights, then calls
`shard_model`: `fully_shard` per decoder layer and on the root, after which rank 0's initialised weights are
broadcast into every rank's shards. Initialising after sharding (or on meta tensors) would write into shards or
empty storage; relying on equal seeds alone would silently mix two different models when a run is not seeded.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from xpert_pl.errors import ConfigError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallelism (PyTorch FSDP2) over every process of the run, without tensor parallelism.

    Lightning's `ModelParallelStrategy` with `data_parallel_size` = the world size and `tensor_parallel_size` 1,
    sized at launch (so `devices: auto` and `num_nodes` work), holding the sharding's options. Runs on GPUs (NCCL)
    and on CPUs (gloo), where Lightning's `FSDPStrategy` is refused.
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ):
        """
        Args:
            activation_checkpointing: recompute each decoder layer's activations in the backward pass (Hugging
                Face gradient checkpointing, non-reentrant): less memory, about a third more compute.
            reshard_after_forward: free each layer's gathered weights after its forward (ZeRO-3); False keeps
                them until the backward (ZeRO-2-like: more memory, fewer all-gathers).
            save_distributed_checkpoint: True writes one checkpoint file per rank (a folder); False (default)
                gathers full weights and optimizer state into one `.ckpt` on rank 0, which `--ckpt_path`,
                `model.init_checkpoint` and `xpert` commands read as any other checkpoint.
            process_group_backend: `nccl` on GPUs and `gloo` on CPUs when unset.
            timeout: of the process group's collectives.
        """
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # Every process is a data-parallel replica; the parent would use the node count here.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def shard_model(model: nn.Module, mesh: DeviceMesh, strategy: Any | None = None) -> None:
    """Shard an initialised, full `model` over the mesh's data-parallel dimension, in place.

    `strategy` supplies the options (an `FSDP2Strategy`); any other (plain `ModelParallelStrategy`) uses the
    defaults. Every rank must call this (it broadcasts rank 0's weights).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    dp_mesh = _data_parallel_mesh(mesh)
    reshard = getattr(strategy, "reshard_after_forward", True)
    if getattr(strategy, "activation_checkpointing", False):
        _checkpoint_activations(model)
    # Rank 0's full tensors (the module's own storage, which fully_shard replaces rather than frees).
    full_state = model.state_dict() if dp_mesh.get_rank() == 0 else {}
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=dp_mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full_state, options=options)


def _checkpoint_activations(model: nn.Module) -> None:
    """Hugging Face's per-layer activation checkpointing, non-reentrant (what FSDP2's hooks need)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the older name is deprecated there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules of the classes Hugging Face never splits across devices."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    if not layers:
        raise ConfigError(
            [
                f"sharded training: {type(model).__name__} names no decoder layer class (_no_split_modules), so it "
                "cannot be sharded per layer; train it with a DDP strategy (configs/gpu/ddp-bf16.yaml)"
            ]
        )
    return layers


def _data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ConfigError(
            [
                f"trainer.strategy: tensor parallelism (tensor_parallel_size={mesh['tensor_parallel'].size()}) is not "
                "supported for these models; use xpert_pl.training.FSDP2Strategy (configs/gpu/fsdp-bf16.yaml) or "
                "ModelParallelStrategy with tensor_parallel_size: 1"
            ]
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh
