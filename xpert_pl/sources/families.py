"""The Mixture-of-Experts families the kit reads, described as data: one `Family` record per `config.model_type`.

A record says which decoder layers are MoE, where the router, routed experts and shared experts sit in a live
model, which config fields hold the expert count and top-k, how the router scores experts, and under which keys a
checkpoint stores each expert's gate / up / down matrices, in the per-expert layout
(`model.layers.{l}.mlp.experts.{e}.gate_proj.weight`, Mixtral originally `...block_sparse_moe.experts.{e}.w1.weight`)
or the fused layout (`model.layers.{l}.mlp.experts.gate_up_proj` (E x 2I x H), `...down_proj` (E x H x I)).
Configs are read either as a live `PretrainedConfig` or as the dict of a `config.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MATRICES = ("gate", "up", "down")
LAYER_PREFIX = "model.layers.{l}."


class UnsupportedModelError(ValueError):
    """The model is not a Mixture-of-Experts of a supported family."""


def config_dict(config: Any) -> Mapping[str, Any]:
    """A config as a mapping: a `config.json` dict as it is, a `PretrainedConfig` through `to_dict()`."""
    return config if isinstance(config, Mapping) else config.to_dict()


def _every_layer(config: Mapping[str, Any], layer: int) -> bool:
    return True


def _qwen2_moe_layer(config: Mapping[str, Any], layer: int) -> bool:
    # Qwen2-MoE's own rule: sparse every `decoder_sparse_step` layers, except those listed as dense.
    step = config.get("decoder_sparse_step") or 1
    return layer not in (config.get("mlp_only_layers") or []) and (layer + 1) % step == 0


def _deepseek_layer(config: Mapping[str, Any], layer: int) -> bool:
    # DeepSeek's reference code: the first `first_k_dense_replace` layers are dense, then every
    # `moe_layer_freq`-th layer index (counted from 0, not from the first MoE layer) is MoE.
    return layer >= (config.get("first_k_dense_replace") or 0) and layer % (config.get("moe_layer_freq") or 1) == 0


# Per-expert key suffixes (after `model.layers.{l}.`) of gate / up / down: transformers' names, then Mixtral's.
_PER_EXPERT = {m: f"mlp.experts.{{e}}.{m}_proj.weight" for m in MATRICES}
_MIXTRAL_ORIGINAL = {
    m: f"block_sparse_moe.experts.{{e}}.{w}.weight" for m, w in (("gate", "w1"), ("up", "w3"), ("down", "w2"))
}
_FUSED = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


@dataclass(frozen=True)
class Family:
    """Where one MoE family keeps its experts, live and on disk.

    Attributes:
        name: the `config.model_type`.
        num_experts_fields: config fields that may hold the routed-expert count, first present wins.
        is_moe_layer: (config, layer index) -> whether that decoder layer has routed experts.
        scoring: router scoring (`softmax` or `sigmoid`) unless the config's `scoring_func` says otherwise.
        blocks: attribute names of the MoE block in a live decoder layer, first present wins.
        shared: attribute names of the shared (always-on) experts in a live MoE block.
        expert_keys: per-expert key suffixes per matrix, in the order they are tried.
        fused_keys: fused (gate_up, down) key suffixes, in the order they are tried.
        shared_prefixes: key prefixes (after `model.layers.{l}.`) of the shared experts' tensors.
        top_k_field: config field with the experts per token.
        router: attribute name of the router inside the MoE block.
        experts: attribute name of the routed experts inside the MoE block.
        router_keys: router weight key suffixes (after `model.layers.{l}.`), in the order they are tried.
    """

    name: str
    num_experts_fields: tuple[str, ...]
    is_moe_layer: Callable[[Mapping[str, Any], int], bool] = _every_layer
    scoring: str = "softmax"
    blocks: tuple[str, ...] = ("mlp",)
    shared: tuple[str, ...] = ()
    expert_keys: tuple[dict[str, str], ...] = (_PER_EXPERT,)
    fused_keys: tuple[tuple[str, str], ...] = (_FUSED,)
    shared_prefixes: tuple[str, ...] = ()
    top_k_field: str = "num_experts_per_tok"
    router: str = "gate"
    experts: str = "experts"
    router_keys: tuple[str, ...] = ("mlp.gate.weight",)

    def num_experts(self, config: Any) -> int:
        """Routed experts per MoE layer (0 when the config has none)."""
        cfg = config_dict(config)
        return int(next((cfg[f] for f in self.num_experts_fields if cfg.get(f)), 0))

    def top_k(self, config: Any) -> int:
        """Experts routed per token."""
        return int(config_dict(config)[self.top_k_field])

    def scoring_of(self, config: Any) -> str:
        """Router scoring function: the config's `scoring_func` when it has one, else the family's."""
        return str(config_dict(config).get("scoring_func") or self.scoring)

    def moe_layer_indices(self, config: Any, num_layers: int | None = None) -> list[int]:
        """Decoder layer indices with routed experts (dense layers left out)."""
        cfg = config_dict(config)
        total = cfg["num_hidden_layers"] if num_layers is None else num_layers
        return [layer for layer in range(total) if self.is_moe_layer(cfg, layer)]

    def per_expert_keys(self, layer: int, expert: int, matrix: str) -> list[str]:
        """Candidate checkpoint keys of one expert's matrix in the per-expert layout."""
        prefix = LAYER_PREFIX.format(l=layer)
        return [prefix + keys[matrix].format(e=expert) for keys in self.expert_keys]

    def fused_key_pairs(self, layer: int) -> list[tuple[str, str]]:
        """Candidate (gate_up, down) checkpoint keys of a layer in the fused layout."""
        prefix = LAYER_PREFIX.format(l=layer)
        return [(prefix + gate_up, prefix + down) for gate_up, down in self.fused_keys]

    def router_key_candidates(self, layer: int) -> list[str]:
        """Candidate checkpoint keys of one MoE layer's router weight (E x H)."""
        return [LAYER_PREFIX.format(l=layer) + key for key in self.router_keys]

    def shared_key_prefixes(self, layer: int) -> list[str]:
        """Key prefixes of the shared experts' tensors in one layer."""
        return [LAYER_PREFIX.format(l=layer) + p for p in self.shared_prefixes]


_DEEPSEEK = dict(
    num_experts_fields=("n_routed_experts",),
    is_moe_layer=_deepseek_layer,
    shared=("shared_experts",),
    shared_prefixes=("mlp.shared_experts.",),
)

FAMILIES: dict[str, Family] = {
    "olmoe": Family("olmoe", num_experts_fields=("num_experts",)),
    "mixtral": Family(
        "mixtral",
        num_experts_fields=("num_local_experts",),
        # transformers 4 named the live block `block_sparse_moe`, as original Mixtral checkpoints still do on disk.
        blocks=("mlp", "block_sparse_moe"),
        expert_keys=(_MIXTRAL_ORIGINAL, _PER_EXPERT),
        fused_keys=(_FUSED, ("block_sparse_moe.experts.gate_up_proj", "block_sparse_moe.experts.down_proj")),
        router_keys=("block_sparse_moe.gate.weight", "mlp.gate.weight"),
    ),
    "qwen2_moe": Family(
        "qwen2_moe",
        num_experts_fields=("num_experts",),
        is_moe_layer=_qwen2_moe_layer,
        shared=("shared_expert",),
        shared_prefixes=("mlp.shared_expert.", "mlp.shared_expert_gate."),
    ),
    "deepseek_v2": Family("deepseek_v2", **_DEEPSEEK),
    "deepseek_v3": Family("deepseek_v3", scoring="sigmoid", **_DEEPSEEK),
}
SUPPORTED_FAMILIES = tuple(FAMILIES)


def family_of(config: Any) -> Family:
    """The family record of a config (live or a `config.json` dict).

    Raises:
        UnsupportedModelError: unknown `model_type`, or a config of a known family with no routed experts.
    """
    cfg = config_dict(config)
    model_type = cfg.get("model_type", "?")
    family = FAMILIES.get(model_type)
    if family is None or family.num_experts(cfg) <= 0:
        reason = "has no routed experts" if family else "is not a supported Mixture-of-Experts"
        raise UnsupportedModelError(
            f"model type '{model_type}' {reason}; supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return family
