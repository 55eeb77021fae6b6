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
        is_moe_layer: (config, layer index) -> whether that decoder layer has routed experts; None: the layers
            that hold experts (modules in a live model, expert keys in a checkpoint) are the MoE layers.
        scoring: router scoring (`softmax` or `sigmoid`) unless the config's `scoring_field` says otherwise.
        blocks: attribute names of the MoE block in a live decoder layer, first present wins.
        shared: attribute names of the shared (always-on) experts in a live MoE block.
        expert_keys: per-expert key suffixes per matrix, in the order they are tried.
        fused_keys: fused (gate_up, down) key suffixes, in the order they are tried.
        shared_prefixes: key prefixes (after `model.layers.{l}.`) of the shared experts' tensors.
        top_k_field: config field with the experts per token.
        scoring_field: config field that may name the scoring function.
        router: attribute name of the router inside the MoE block.
        experts: attribute name of the routed experts inside the MoE block.
        router_keys: router weight key suffixes (after `model.layers.{l}.`), in the order they are tried.
    """

    name: str
    num_experts_fields: tuple[str, ...]
    is_moe_layer: Callable[[Mapping[str, Any], int], bool] | None = _every_layer
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
    scoring_field: str = "scoring_func"

    def num_experts(self, config: Any) -> int:
        """Routed experts per MoE layer (0 when the config has none)."""
        cfg = config_dict(config)
        return int(next((cfg[f] for f in self.num_experts_fields if cfg.get(f)), 0))

    def top_k(self, config: Any) -> int:
        """Experts routed per token."""
        return int(config_dict(config)[self.top_k_field])

    def scoring_of(self, config: Any) -> str:
        """Router scoring function: the config's `scoring_func` when it has one, else the family's."""
        return str(config_dict(config).get(self.scoring_field) or self.scoring)

    def moe_layer_indices(
        self, config: Any, num_layers: int | None = None, has_experts: Callable[[int], bool] | None = None
    ) -> list[int]:
        """Decoder layer indices with routed experts (dense layers left out).

        `has_experts(layer)` says whether a layer holds experts; families without a config rule need it.
        """
        cfg = config_dict(config)
        total = cfg["num_hidden_layers"] if num_layers is None else num_layers
        rule = self.is_moe_layer
        if rule is None and has_experts is None:
            raise ValueError(f"{self.name}: its MoE layers are known only from the model's modules or weight keys")
        return [layer for layer in range(total) if (rule(cfg, layer) if rule else has_experts(layer))]

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


def _keys(block: str, names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")) -> dict[str, str]:
    """Per-expert key suffixes of gate / up / down under MoE block `block` (names as stored on disk)."""
    return {m: f"{block}.experts.{{e}}.{n}.weight" for m, n in zip(MATRICES, names, strict=True)}


_W = ("w1", "w3", "w2")  # Mixtral's original gate / up / down names


def _routed(name: str, scoring: str, shared: str | None = None, **fields: Any) -> Family:
    """A transformers-5 family: experts fused in memory, MoE layers found from its modules or weight keys.

    `shared`: attribute of its shared (always-on) experts in the `mlp` block, if any.
    """
    shared_fields = dict(shared=(shared,), shared_prefixes=(f"mlp.{shared}.",)) if shared else {}
    counts = dict(num_experts_fields=("num_experts", "num_local_experts", "n_routed_experts"))
    return Family(name, is_moe_layer=None, scoring=scoring, **{**counts, **shared_fields, **fields})


_GRANITE_ON_DISK = dict(
    blocks=("block_sparse_moe",),
    router="router",
    fused_keys=(("block_sparse_moe.input_linear.weight", "block_sparse_moe.output_linear.weight"),
                ("block_sparse_moe.experts.gate_up_proj", "block_sparse_moe.experts.down_proj")),
    router_keys=("block_sparse_moe.router.layer.weight", "block_sparse_moe.router.weight"),
)  # fmt: skip
_MIXTRAL_ON_DISK = dict(
    expert_keys=(_keys("block_sparse_moe", _W), _PER_EXPERT),
    router_keys=("block_sparse_moe.gate.weight", "mlp.gate.weight"),
)
# Families verified by tests/sources (counts against an independent top-k, experts on disk against live ones).
FAMILIES |= {
    f.name: f
    for f in (
        _routed("cohere2_moe", "softmax", scoring_field="expert_selection_fn"),
        _routed("flex_olmo", "softmax"),
        _routed("mellum", "softmax"),
        _routed("qwen3_moe", "softmax"),
        _routed("qwen3_next", "softmax", "shared_expert"),
        _routed("qwen3_5_moe_text", "softmax", "shared_expert"),
        _routed("qwen4_exp_text", "softmax", "shared_expert"),
        _routed("lara_mini", "softmax", "shared_expert"),
        _routed("ernie4_5_moe", "softmax", "shared_experts", num_experts_fields=("moe_num_experts",),
                top_k_field="moe_k"),
        _routed("jamba", "softmax", blocks=("feed_forward",), router="router", expert_keys=(_keys("feed_forward"),),
                router_keys=("feed_forward.router.weight",)),
        _routed("granitemoe", "softmax", **_GRANITE_ON_DISK),
        _routed("granitemoe_swa", "softmax", **_GRANITE_ON_DISK),
        _routed("granitemoeshared", "softmax", **_GRANITE_ON_DISK),
        _routed("minimax", "softmax", **_MIXTRAL_ON_DISK),
        _routed("minimax_m2", "sigmoid", **_MIXTRAL_ON_DISK),
        _routed("kimi_linear", "sigmoid", "shared_experts", top_k_field="num_experts_per_token", **_MIXTRAL_ON_DISK),
        _routed("glm4_moe", "sigmoid", "shared_experts"),
        _routed("glm4_moe_lite", "sigmoid", "shared_experts"),
        _routed("exaone_moe", "sigmoid", "shared_experts"),
        _routed("solar_open", "sigmoid", "shared_experts"),
        _routed("sarvam_mla", "sigmoid", "shared_experts"),
        _routed("sarvam_moe", "sigmoid", "shared_experts"),
        _routed("axk2", "sigmoid", "shared_experts"),
        _routed("dots1", "sigmoid", "shared_experts"),
        _routed("laguna", "sigmoid", "shared_experts"),
        _routed("dots3_note_text", "sigmoid", "shared_experts"),
        _routed("kolibri1", "sigmoid", "shared_experts"),
        _routed("flint", "sigmoid", "shared_expert"),
        _routed("hy_v4", "sigmoid", "shared_experts"),
        _routed("minimax_m3_vl_text", "sigmoid", "shared_experts"),
        _routed("bailing_hybrid", "sigmoid", "shared_experts", top_k_field="num_experts_per_token"),
        _routed("hy_v3", "sigmoid", "shared_experts", router_keys=("mlp.router.gate.weight", "mlp.gate.weight"),
                shared_prefixes=("mlp.shared_mlp.", "mlp.shared_experts.")),
    )
}  # fmt: skip

SUPPORTED_FAMILIES = tuple(FAMILIES)

_NOT_CAUSAL = "has no causal-LM class in transformers (a part of a multimodal or encoder-decoder model)"
_UNVERIFIED = "not verified: a tiny model of it does not build or run at the test sizes"
_TRANSPOSED = "stores its experts transposed (E x H x 2I), a layout the kit does not read"


def _wrapper(text: str | None = None) -> str:
    inner = f"; its text model '{text}' is supported on its own" if text in FAMILIES else ""
    return f"is a multimodal wrapper whose MoE sits in a sub-config{inner}"


# Every other MoE family of the installed transformers, with why it is refused (tests/sources/test_registry.py
# fails when transformers ships one that is in neither table).
REFUSED: dict[str, str] = {
    **dict.fromkeys(
        ("aria", "deepseek_ocr2", "diffusion_gemma", "ernie4_5_vl_moe", "gemma4", "glm4v_moe", "glm5_next",
         "hy_v4_vl", "inkling2", "inkling2_loop", "inkling_mm_model", "kimi_k25", "llama4", "mistral_large4",
         "muse_spark", "nemo_speechlm", "nemotron_h_omni", "qwen3_omni_moe", "qwen3_omni_moe_thinker", "qwen3_vl_moe",
         "step3p7", "unlimited_ocr", "vitpose"),
        _wrapper(),
    ),
    "dots3_note": _wrapper("dots3_note_text"),
    "minimax_m3_vl": _wrapper("minimax_m3_vl_text"),
    "qwen3_5_moe": _wrapper("qwen3_5_moe_text"),
    "qwen4_exp": _wrapper("qwen4_exp_text"),
    **dict.fromkeys(
        ("deepseek_ocr2_text", "diffusion_gemma_text", "dots3_note_vision_encoder", "ernie4_5_vl_moe_text",
         "glm4v_moe_text", "glm5_next_text", "hy_v4_vl_text", "mistral4", "mistral_large4_text", "muse_spark_text",
         "openai_privacy_filter", "qwen3_omni_moe_talker_text", "qwen3_omni_moe_text", "qwen3_vl_moe_text",
         "step3p5", "unlimited_ocr_text", "vitpose_backbone"),
        _NOT_CAUSAL,
    ),
    **dict.fromkeys(("nllb-moe", "switch_transformers"), "is an encoder-decoder with non-gated (ReLU) experts"),
    **dict.fromkeys(("aria_text", "llama4_text"), _TRANSPOSED),
    "gpt_oss": "has experts with biases, interleaved gate/up rows and a clamped SwiGLU: not a plain gated FFN",
    "dbrx": "stores its experts as flattened w1/v1/w2 blocks (ffn_config), a layout the kit does not read",
    "nemotron_h": "has non-gated experts (up and down projections only, squared ReLU)",
    "jetmoe": "mixes attention-head experts with JetMoe's own parallel-expert MLP, not a gated FFN block",
    "phimoe": "routes with SparseMixer, whose probabilities are not a softmax or sigmoid of the logits",
    "deepseek_v4": "routes its first layers by a hash of the token id (tid2eid), not by the router's scores",
    "longcat_flash": "mixes zero-computation experts (zero_expert_num) with FFN experts",
    "doge": "has single-neuron retrieval experts (embedding lookups), not gated FFN experts",
    "afmoe": "keeps its router weight in a submodule (mlp.router.gate), which the kit does not read",
    "hunyuan_v1_moe": "keeps its router weight in a submodule (mlp.gate.wg), which the kit does not read",
    "inkling_text": "has a router that returns a fourth output (shared-expert gammas), which the kit does not read",
    **dict.fromkeys(
        ("axk1", "beam", "deepseek_v32", "gemma4_text", "glm_moe_dsa", "granitemoehybrid", "inkling2_loop_text",
         "inkling2_text", "lfm2_moe", "mimo_v2_flash", "zaya"),
        _UNVERIFIED,
    ),
}  # fmt: skip


def family_of(config: Any) -> Family:
    """The family record of a config (live or a `config.json` dict).

    Raises:
        UnsupportedModelError: unknown `model_type`, or a config of a known family with no routed experts.
    """
    cfg = config_dict(config)
    model_type = cfg.get("model_type", "?")
    family = FAMILIES.get(model_type)
    if model_type in REFUSED:
        raise UnsupportedModelError(f"model type '{model_type}' is not read by the kit: it {REFUSED[model_type]}")
    if family is None or family.num_experts(cfg) <= 0:
        reason = "has no routed experts" if family else "is not a supported Mixture-of-Experts"
        raise UnsupportedModelError(
            f"model type '{model_type}' {reason}; supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return family
