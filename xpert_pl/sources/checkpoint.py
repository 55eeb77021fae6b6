"""Read expert matrices straight from a safetensors checkpoint directory, without building the model.

Only the tensors asked for are read: a per-expert key is read whole, a fused `gate_up_proj` / `down_proj` key is
sliced to the one expert (and half) needed, and only the shards holding those keys are opened. Matrices come out
as in `xpert_pl.sources.experts`: float32, gate and up (I x H), down (H x I).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from xpert_pl.sources.families import MATRICES, Family, family_of

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, or lacks a tensor that its config implies."""


def has_safetensors_weights(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory with `model.safetensors` or a safetensors shard index."""
    path = Path(path)
    return (path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file()


class CheckpointExperts:
    """The routed experts of a Hugging Face MoE checkpoint directory, read lazily from its safetensors files.

    Attributes:
        path: the checkpoint directory.
        config: the parsed `config.json`.
        family: the family record (see `xpert_pl.sources.families`).
        num_experts: routed experts per MoE layer.
        top_k: experts routed per token.
        scoring: router scoring function (`softmax` or `sigmoid`).
    """

    def __init__(self, path: str | os.PathLike):
        """
        Args:
            path: a directory with `config.json` and `model.safetensors` or `model.safetensors.index.json` + shards.

        Raises:
            FileNotFoundError: the directory, its config or its weights are missing.
            UnsupportedModelError: the config is not of a supported MoE family.
            CheckpointError: a safetensors file or the index is corrupt.
        """
        self.path = Path(path)
        config_file = self.path / "config.json"
        if not self.path.is_dir():
            raise FileNotFoundError(f"checkpoint directory '{self.path}' not found")
        if not config_file.is_file():
            raise FileNotFoundError(f"'{self.path}' has no config.json; is it a Hugging Face model directory?")
        self.config: dict[str, Any] = json.loads(config_file.read_text())
        self.family: Family = family_of(self.config)
        self.num_experts = self.family.num_experts(self.config)
        self.top_k = self.family.top_k(self.config)
        self.scoring = self.family.scoring_of(self.config)
        self._weight_map = self._read_weight_map()

    def __repr__(self) -> str:
        return f"CheckpointExperts('{self.path}', family={self.family.name}, num_experts={self.num_experts})"

    @property
    def weight_files(self) -> list[str]:
        """Names of the safetensors files holding the weights."""
        return sorted(set(self._weight_map.values()))

    def moe_layer_indices(self) -> list[int]:
        """Decoder layer indices with routed experts (dense layers left out)."""
        return self.family.moe_layer_indices(self.config, has_experts=self._has_expert_keys)

    def _has_expert_keys(self, layer: int) -> bool:
        """Whether the checkpoint stores routed experts for decoder layer `layer` (either layout)."""
        keys = self.family.per_expert_keys(layer, 0, "gate") + [p[0] for p in self.family.fused_key_pairs(layer)]
        return any(k in self._weight_map for k in keys)

    def expert_matrix(self, layer: int, expert: int, matrix: str) -> torch.Tensor:
        """One expert's `matrix` ('gate', 'up' or 'down') of MoE layer `layer`, float32, nn.Linear orientation."""
        return self.stack_experts(layer, [expert], matrix)[..., 0]

    def stack_experts(self, layer: int, expert_ids: list[int], matrix: str) -> torch.Tensor:
        """The selected experts' `matrix` of layer `layer` stacked on a last mode: a (d1 x d2 x n) tensor."""
        self._check(layer, expert_ids, matrix)
        with contextlib.ExitStack() as stack:
            handles: dict[str, Any] = {}

            def handle(key: str) -> Any:
                file = self._weight_map[key]
                if file not in handles:  # each shard opened at most once per call
                    handles[file] = stack.enter_context(self._open(file))
                return handles[file]

            mats = [self._read_expert(handle, layer, e, matrix) for e in expert_ids]
        return torch.stack(mats, dim=-1)

    def has_tensor(self, key: str) -> bool:
        """Whether the checkpoint holds a tensor named `key`."""
        return key in self._weight_map

    def read_tensor(self, key: str) -> torch.Tensor:
        """Any one tensor of the checkpoint by its key (only its shard is opened), float32."""
        if key not in self._weight_map:
            raise CheckpointError(f"{self.path}: no tensor named '{key}' in {', '.join(self.weight_files)}")
        with self._open(self._weight_map[key]) as handle:
            return self._guarded(key, lambda: handle.get_tensor(key)).float()

    def shared_expert_keys(self, layer: int) -> list[str]:
        """Checkpoint keys of layer `layer`'s shared (always-on) experts, for reporting; empty if it has none."""
        prefixes = tuple(self.family.shared_key_prefixes(layer))
        return sorted(k for k in self._weight_map if prefixes and k.startswith(prefixes))

    def router_weight(self, layer: int) -> torch.Tensor:
        """MoE layer `layer`'s router weight (E x H) as stored (its dtype kept), read by key."""
        candidates = self.family.router_key_candidates(layer)
        key = next((k for k in candidates if k in self._weight_map), None)
        if key is None:
            raise CheckpointError(f"{self.path}: no router weight for layer {layer}; tried keys {candidates}")
        with self._open(self._weight_map[key]) as handle:
            return self._guarded(key, lambda: handle.get_tensor(key))

    def _check(self, layer: int, expert_ids: list[int], matrix: str) -> None:
        if matrix not in MATRICES:
            raise ValueError(f"matrix must be one of {MATRICES}, got '{matrix}'")
        layers = self.moe_layer_indices()
        if layer not in layers:
            raise ValueError(f"layer {layer} is not an MoE layer of {self.path}; its MoE layers are {layers}")
        bad = [e for e in expert_ids if not 0 <= e < self.num_experts]
        if not expert_ids or bad:
            raise IndexError(f"expert ids {expert_ids} must be a non-empty list in [0, {self.num_experts})")

    def _read_expert(self, handle: Callable[[str], Any], layer: int, expert: int, matrix: str) -> torch.Tensor:
        """One expert's matrix: its own key if the checkpoint has per-expert keys, else a slice of the fused one."""
        per_expert = self.family.per_expert_keys(layer, expert, matrix)
        key = next((k for k in per_expert if k in self._weight_map), None)
        if key is not None:
            return self._guarded(key, lambda: handle(key).get_tensor(key)).float()
        fused = next((p for p in self.family.fused_key_pairs(layer) if p[0] in self._weight_map), None)
        if fused is None:
            tried = per_expert + [k for pair in self.family.fused_key_pairs(layer) for k in pair]
            raise CheckpointError(f"{self.path}: no shard holds expert {expert} of layer {layer}; tried keys {tried}")
        key = fused[1] if matrix == "down" else fused[0]
        if key not in self._weight_map:
            raise CheckpointError(f"{self.path}: key '{key}' is in no shard ({', '.join(self.weight_files)})")
        return self._guarded(key, lambda: self._fused_slice(handle(key).get_slice(key), key, expert, matrix)).float()

    def _fused_slice(self, view: Any, key: str, expert: int, matrix: str) -> torch.Tensor:
        """Slice one expert (and for gate_up, its gate or up half) out of a fused 3-D tensor, reading only that."""
        shape = view.get_shape()
        hidden = self.config.get("hidden_size")
        # transformers 5 stores (E, 2I, H) and (E, H, I); a transposed variant would silently give wrong matrices.
        hidden_axis = 1 if matrix == "down" else 2
        if len(shape) != 3 or shape[0] != self.num_experts or (hidden and shape[hidden_axis] != hidden):
            raise CheckpointError(
                f"{self.path}: fused tensor '{key}' has shape {list(shape)}; expected {self.num_experts} experts "
                f"with hidden size {hidden} on axis {hidden_axis}"
            )
        if matrix == "down":
            return view[expert]
        half = shape[1] // 2
        return view[expert, :half] if matrix == "gate" else view[expert, half:]

    def _guarded(self, key: str, read: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run `read`, turning a safetensors failure into an error naming the file and key."""
        try:
            return read()
        except SafetensorError as err:
            raise CheckpointError(f"cannot read '{key}' from {self.path / self._weight_map[key]}: {err}") from err

    @contextlib.contextmanager
    def _open(self, file: str) -> Iterator[Any]:
        """Open one safetensors file, naming it in the error when it is missing or corrupt."""
        full = self.path / file
        if not full.is_file():
            raise FileNotFoundError(f"weight file '{full}' (listed in {INDEX_FILE}) not found")
        try:
            handle = safe_open(str(full), framework="pt")
        except SafetensorError as err:
            raise CheckpointError(f"corrupt or truncated safetensors file '{full}': {err}") from err
        with handle as opened:
            yield opened

    def _read_weight_map(self) -> dict[str, str]:
        """Key -> file name, from the shard index, or from the header of the single `model.safetensors`."""
        index = self.path / INDEX_FILE
        if index.is_file():
            try:
                return dict(json.loads(index.read_text())["weight_map"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"unreadable shard index '{index}': {err}") from err
        if not (self.path / SINGLE_FILE).is_file():
            raise FileNotFoundError(
                f"'{self.path}' has neither {SINGLE_FILE} nor {INDEX_FILE}; only safetensors checkpoints are read"
            )
        with self._open(SINGLE_FILE) as handle:
            return dict.fromkeys(handle.keys(), SINGLE_FILE)


def open_expert_source(model: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    """The experts of a source MoE: read by key from a local safetensors directory, else the model loaded.

    A local directory with safetensors weights becomes a `CheckpointExperts` (nothing but the experts asked for
    is ever read, so a 7B source need not fit in memory); anything else (a hub id when online, a directory of
    other weight files) is loaded with `from_pretrained`.
    """
    from xpert_pl.models import load_causal_lm

    if Path(model).is_dir() and has_safetensors_weights(model):
        return CheckpointExperts(model)
    if Path(model).is_dir():
        logging.getLogger(__name__).warning("%s has no safetensors weights; loading the whole model", model)
    return load_causal_lm(model, trust_remote_code=trust_remote_code)
