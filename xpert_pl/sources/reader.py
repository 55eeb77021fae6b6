"""One reading interface over a source MoE, live or on disk: `expert_reader` adapts a loaded Hugging Face model
(through `moe_layers`) or a `CheckpointExperts` to an `ExpertReader`, whose stacked experts are refused when they
hold NaN or Inf and whose matrix shapes of a checkpoint come from its safetensors headers alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from xpert_pl.sources.checkpoint import CheckpointError, CheckpointExperts
from xpert_pl.sources.experts import moe_layers, stack_experts
from xpert_pl.sources.families import config_dict, family_of


@dataclass
class ExpertReader:
    """What extraction needs of a source, live or on disk: routed experts per MoE layer, a stacking reader and
    the (d1, d2) shape of each layer's matrices."""

    num_experts: dict[int, int]
    stack: Callable[[int, list[int], str], torch.Tensor]
    matrix_shape: Callable[[int, str], tuple[int, int]]
    summary: dict[str, Any]


_SUMMARY_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_experts_per_tok")


def expert_reader(source: nn.Module | CheckpointExperts) -> ExpertReader:
    """Adapt a live model (through `moe_layers`) or a `CheckpointExperts` to one reading interface."""
    if isinstance(source, CheckpointExperts):
        config, family = source.config, source.family
        num_experts = dict.fromkeys(source.moe_layer_indices(), source.num_experts)
        stack = source.stack_experts
        matrix_shape = _HeaderShapes(source)
    else:
        config = config_dict(source.config)
        family = family_of(config)
        layers = {moe.index: moe for moe in moe_layers(source)}
        num_experts = {i: moe.num_experts for i, moe in layers.items()}

        def stack(layer: int, ids: list[int], matrix: str) -> torch.Tensor:
            return stack_experts(layers[layer].experts, ids, matrix)

        def matrix_shape(layer: int, matrix: str) -> tuple[int, int]:
            return tuple(stack(layer, [0], matrix).shape[:2])  # one expert, already in memory

    summary = {k: config.get(k) for k in _SUMMARY_KEYS}
    # The expert count lives under a family-specific field; the manifest names it uniformly.
    summary["num_experts"] = family.num_experts(config)
    summary["moe_intermediate_size"] = config.get("moe_intermediate_size")
    summary["moe_layers"] = sorted(num_experts)
    where = str(source.path) if isinstance(source, CheckpointExperts) else type(source).__name__
    return ExpertReader(num_experts, _finite_only(stack, where), matrix_shape, summary)


def _finite_only(
    stack: Callable[[int, list[int], str], torch.Tensor], where: str
) -> Callable[[int, list[int], str], torch.Tensor]:
    """`stack` that refuses experts with NaN or Inf weights: a bank built from them would poison every student."""

    def checked(layer: int, ids: list[int], matrix: str) -> torch.Tensor:
        tensor = stack(layer, ids, matrix)
        finite = torch.isfinite(tensor).flatten(0, -2).all(dim=0)
        if not bool(finite.all()):
            bad = [expert for expert, ok in zip(ids, finite.tolist(), strict=True) if not ok]
            raise CheckpointError(
                f"{where}: NaN or Inf in the {matrix} weights of experts {bad} of layer {layer}; the checkpoint is "
                "damaged (or was saved after training diverged): use an intact copy"
            )
        return tensor

    return checked


class _HeaderShapes:
    """(d1, d2) of an expert matrix of a checkpoint, from its safetensors headers alone (no tensor data read)."""

    def __init__(self, checkpoint: CheckpointExperts):
        self.checkpoint = checkpoint
        self._shapes: dict[str, list[int]] | None = None

    def __call__(self, layer: int, matrix: str) -> tuple[int, int]:
        shapes = self._read() if self._shapes is None else self._shapes
        family = self.checkpoint.family
        key = next((k for k in family.per_expert_keys(layer, 0, matrix) if k in shapes), None)
        if key is not None:
            return tuple(shapes[key])
        # Fused layout, as `CheckpointExperts` reads it: gate_up (E, 2I, H) holds gate then up; down is (E, H, I).
        fused = next((pair for pair in family.fused_key_pairs(layer) if set(pair) <= shapes.keys()), None)
        if fused is None:
            raise CheckpointError(f"{self.checkpoint.path}: no tensor holds the {matrix} experts of layer {layer}")
        if matrix == "down":
            return tuple(shapes[fused[1]][1:])
        _, rows, cols = shapes[fused[0]]
        return rows // 2, cols

    def _read(self) -> dict[str, list[int]]:
        self._shapes = {}
        for name in self.checkpoint.weight_files:
            path = self.checkpoint.path / name
            try:
                with safe_open(str(path), framework="pt") as handle:
                    names = handle.keys()  # a safetensors handle is not iterable itself
                    self._shapes.update({key: handle.get_slice(key).get_shape() for key in names})
            except SafetensorError as err:
                raise CheckpointError(f"corrupt or truncated safetensors file '{path}': {err}") from err
        return self._shapes
