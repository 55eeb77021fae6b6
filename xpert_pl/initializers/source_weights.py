"""Optional transfer of the source's attention, norm and embedding weights on top of any other initializer.

XPERT transfers FFN matrices only; whether the source's attention or embeddings help too is a separate question,
so it is a separate, composable class (off unless a config wraps its initializer in it). The adaptation follows
the FFN rules where it can: whole attention heads are kept (evenly spaced heads, the same head_dim required,
since rotary embeddings pair dimensions inside a head), hidden dimensions are selected or spread as for the FFN,
and the depth map is uniform (or first-N) over all of the source's decoder layers.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from xpert_pl.adaptation import depth_map, hidden_indices, uniform_indices, write_block
from xpert_pl.initializers.base import Initializer, InitReport
from xpert_pl.layout import Artifact
from xpert_pl.provenance import check_same_source, recorded_source, source_fingerprint
from xpert_pl.sources.checkpoint import CheckpointExperts, open_expert_source
from xpert_pl.sources.families import config_dict

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


class SourceTensors:
    """Tensors of a source model by checkpoint key: read from its safetensors files, or from a loaded model."""

    def __init__(self, source: Any):
        self.config = source.config if isinstance(source, CheckpointExperts) else config_dict(source.config)
        self._checkpoint = source if isinstance(source, CheckpointExperts) else None
        self._state = None if self._checkpoint else source.state_dict()

    def has(self, key: str) -> bool:
        return self._checkpoint.has_tensor(key) if self._checkpoint else key in self._state

    def get(self, key: str) -> torch.Tensor:
        if self._checkpoint:
            return self._checkpoint.read_tensor(key)
        if key not in self._state:
            raise KeyError(f"the source model has no tensor '{key}'")
        return self._state[key].detach().float().cpu()


def heads_of(config: dict[str, Any]) -> tuple[int, int, int]:
    """(attention heads, key/value heads, head_dim) of a Hugging Face config dict."""
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    return heads, kv, head_dim


class WithSourceWeights(Initializer):
    """Runs `base`, then copies the source's attention (and norms) and/or embeddings into the student."""

    artifacts: ClassVar[dict[str, Artifact]] = {"source": Artifact.SOURCE}

    def __init__(
        self,
        base: Initializer,
        source: str,
        attention: bool = True,
        embeddings: bool = False,
        depth_strategy: Literal["uniform", "first"] = "uniform",
        trust_remote_code: bool = False,
    ):
        """
        Args:
            base: the initializer of everything else (e.g. `xpert_pl.initializers.XpertInit`).
            source: the source model (local HF directory, read by key, or a hub id when online).
            attention: copy q/k/v/o projections (evenly spaced whole heads) and the layer norms.
            embeddings: copy the token embeddings, the output head and the final norm (same vocabulary needed).
            depth_strategy: student layer -> source decoder layer: `uniform` stride or the `first` L_t layers.
            trust_remote_code: allow the source's own Python code to run when it has to be loaded.
        """
        if not (attention or embeddings):
            raise ValueError("WithSourceWeights needs attention=True or embeddings=True (else use the base alone)")
        self.base, self.source = base, source
        self.attention, self.embeddings = attention, embeddings
        self.depth_strategy, self.trust_remote_code = depth_strategy, trust_remote_code

    def preflight(self) -> None:
        self.base.preflight()
        self._check_base_bank(open_expert_source(self.source, self.trust_remote_code))

    @torch.no_grad()
    def initialize(self, model: PreTrainedModel) -> InitReport:
        source = open_expert_source(self.source, self.trust_remote_code)
        self._check_base_bank(source)  # before the base reads anything
        report = self.base.initialize(model)
        tensors = SourceTensors(source)
        params = dict(model.named_parameters())
        hidden = hidden_indices(int(tensors.config["hidden_size"]), model.config.hidden_size)
        written, details = [], {"source": self.source}
        if self.attention:
            details["attention"] = self._attention(model, tensors, params, hidden, written)
        if self.embeddings:
            details["embeddings"] = _embeddings(model, tensors, params, hidden, written)
        return InitReport(
            initializer=f"{report.initializer}+source_weights",
            set_parameters=[*report.set_parameters, *written],
            details={**report.details, "source_weights": details},
        )

    def _check_base_bank(self, source: Any) -> None:
        """A base that reads a bank (XpertInit and its controls) must have a bank of this source, when the bank
        records its source fingerprint (banks written before provenance was recorded cannot be checked)."""
        load_bank = getattr(self.base, "load_bank", None)
        record = recorded_source(load_bank().manifest) if callable(load_bank) else None
        if record is not None:
            check_same_source(record, "bank", self.base.bank, self.source, source_fingerprint(source))

    def _attention(self, model, tensors: SourceTensors, params, hidden, written: list[str]) -> dict[str, Any]:
        src_heads, tgt_heads = heads_of(tensors.config), heads_of(config_dict(model.config))
        if src_heads[2] != tgt_heads[2] or tgt_heads[0] > src_heads[0] or tgt_heads[1] > src_heads[1]:
            raise ValueError(
                f"attention transfer keeps whole heads: the student's (heads, kv heads, head_dim) {tgt_heads} must "
                f"have the source's head_dim and at most its heads {src_heads}"
            )
        keep_q, keep_kv = uniform_indices(src_heads[0], tgt_heads[0]), uniform_indices(src_heads[1], tgt_heads[1])
        mapping = depth_map(
            int(tensors.config["num_hidden_layers"]), model.config.num_hidden_layers, self.depth_strategy
        )
        for j, i in enumerate(mapping):
            for name in ATTENTION:
                key = f"model.layers.{i}.self_attn.{name}.weight"
                if not tensors.has(key):
                    raise ValueError(f"the source has no '{key}': attention transfer needs q/k/v/o projections")
                keep = keep_q if name in ("q_proj", "o_proj") else keep_kv
                _copy_heads(
                    params, f"model.layers.{j}.self_attn.{name}.weight", tensors.get(key), keep, src_heads[2], hidden
                )
                written.append(f"model.layers.{j}.self_attn.{name}.weight")
            for norm in ("input_layernorm", "post_attention_layernorm"):
                _copy_hidden(
                    params, f"model.layers.{j}.{norm}.weight", tensors.get(f"model.layers.{i}.{norm}.weight"), hidden
                )
                written.append(f"model.layers.{j}.{norm}.weight")
        return {"depth_map": mapping, "heads_kept": keep_q.tolist(), "kv_heads_kept": keep_kv.tolist()}


def _copy_heads(params, name: str, weight: torch.Tensor, keep: torch.Tensor, head_dim: int, hidden) -> None:
    """Kept heads of a q/k/v (heads on rows) or o (heads on columns) projection, hidden dimensions adapted."""
    read, write = hidden
    if name.endswith("o_proj.weight"):
        block = weight.reshape(weight.shape[0], -1, head_dim)[:, keep].flatten(1)
        write_block(params[name], block if read is None else block[read], write, None)
    else:
        block = weight.reshape(-1, head_dim, weight.shape[1])[keep].flatten(0, 1)
        write_block(params[name], block if read is None else block[:, read], None, write)


def _copy_hidden(params, name: str, weight: torch.Tensor, hidden) -> None:
    """A norm vector (H) or an embedding-like matrix (V x H), hidden dimensions adapted."""
    read, write = hidden
    block = weight if read is None else weight[..., read]
    if weight.ndim == 1:
        write_block(params[name], block, write, None)
    else:
        write_block(params[name], block, None, write)


def _embeddings(model: nn.Module, tensors: SourceTensors, params, hidden, written: list[str]) -> dict[str, Any]:
    embed = tensors.get("model.embed_tokens.weight")
    if embed.shape[0] != model.config.vocab_size:
        raise ValueError(
            f"embedding transfer needs the source's vocabulary: source {embed.shape[0]} tokens, student "
            f"{model.config.vocab_size}; train the student with the source's tokenizer"
        )
    head_key = "lm_head.weight" if tensors.has("lm_head.weight") else "model.embed_tokens.weight"  # tied source
    pairs = {"model.embed_tokens.weight": embed, "lm_head.weight": tensors.get(head_key)}
    pairs["model.norm.weight"] = tensors.get("model.norm.weight")
    for name, weight in pairs.items():
        _copy_hidden(params, name, weight, hidden)
        written.append(name)
    return {"lm_head_from": head_key}
