"""Source MoE and dense student models: named presets and builders chosen by `class_path`.

Models are plain Hugging Face `PreTrainedModel`s (no Lightning here): `OlmoeForCausalLM` for the source MoE and
`LlamaForCausalLM` (SwiGLU FFN) for the dense students.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    PreTrainedModel,
)

from xpert_pl.errors import ConfigError

# The real OLMoE-1B-7B shape (allenai/OLMoE-1B-7B-0924) and a CPU-sized model with the same structure.
MOE_PRESETS: dict[str, dict[str, Any]] = {
    "olmoe-tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=512,
    ),
    # The benchmark's reference source: OLMoE's routing ratio at CPU scale (16 experts, top-2), each expert the size
    # of the students' FFN (llama-tiny: d_model 128, FFN 256), so a student is the source's shape with one expert.
    "olmoe-reference": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=16,
        num_experts_per_tok=2,
        max_position_embeddings=512,
    ),
    "olmoe-small": dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        num_experts=16,
        num_experts_per_tok=2,
        max_position_embeddings=1024,
    ),
    "olmoe-1b-7b": dict(
        hidden_size=2048,
        intermediate_size=1024,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        num_experts=64,
        num_experts_per_tok=8,
        max_position_embeddings=4096,
        vocab_size=50304,
        clip_qkv=None,
    ),
}

# Dense SwiGLU students. The paper's students: 8/12/16 layers, d_model 2048, FFN 1024.
DENSE_PRESETS: dict[str, dict[str, Any]] = {
    "llama-tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    ),
    "llama-tiny-4l": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    ),
    **{
        f"xpert-{depth}l": dict(
            hidden_size=2048,
            intermediate_size=1024,
            num_hidden_layers=depth,
            num_attention_heads=16,
            num_key_value_heads=16,
            max_position_embeddings=2048,
        )
        for depth in (8, 12, 16)
    },
}


def _resolve_preset(presets: dict[str, dict[str, Any]], name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if name not in presets:
        raise ValueError(f"unknown preset '{name}'; choose one of: {', '.join(presets)}")
    fields = {**presets[name], **overrides}
    hidden, heads = fields.get("hidden_size"), fields.get("num_attention_heads")
    kv_heads = fields.get("num_key_value_heads") or heads
    if hidden and heads and (hidden % heads or heads % kv_heads):
        raise ConfigError(
            [
                f"model preset '{name}' with overrides {overrides}: hidden_size {hidden} must be divisible by "
                f"num_attention_heads {heads}, and that by num_key_value_heads {kv_heads}; change the overrides"
            ]
        )
    return fields


class ModelBuilder(abc.ABC):
    """Builds the Hugging Face causal LM a run trains."""

    @abc.abstractmethod
    def build(self, vocab_size: int | None = None) -> PreTrainedModel:
        """Return a freshly initialised (or loaded) model; `vocab_size` comes from the run's tokenizer."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for manifests and reports."""
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class OlmoeSource(ModelBuilder):
    """A source Mixture-of-Experts: Hugging Face `OlmoeForCausalLM` built from a preset."""

    def __init__(
        self, preset: str = "olmoe-tiny", overrides: dict[str, Any] | None = None, router_aux_loss: bool = True
    ):
        """
        Args:
            preset: one of MOE_PRESETS (`olmoe-tiny`, `olmoe-reference`, `olmoe-small`, `olmoe-1b-7b`).
            overrides: config fields that replace the preset's (e.g. `{num_experts: 16}`).
            router_aux_loss: add OLMoE's load-balancing loss to the training loss.
        """
        self.preset = preset
        self.overrides = dict(overrides or {})
        self.router_aux_loss = router_aux_loss
        _resolve_preset(MOE_PRESETS, preset, self.overrides)

    def config(self, vocab_size: int | None = None) -> OlmoeConfig:
        fields = _resolve_preset(MOE_PRESETS, self.preset, self.overrides)
        if vocab_size is not None:
            fields["vocab_size"] = vocab_size
        return OlmoeConfig(**fields, output_router_logits=self.router_aux_loss, pad_token_id=None, eos_token_id=None)

    def build(self, vocab_size: int | None = None) -> PreTrainedModel:
        return OlmoeForCausalLM(self.config(vocab_size))


class DenseStudent(ModelBuilder):
    """A dense SwiGLU decoder (Hugging Face `LlamaForCausalLM`) built from a preset."""

    def __init__(self, preset: str = "llama-tiny", overrides: dict[str, Any] | None = None):
        """
        Args:
            preset: one of DENSE_PRESETS (`llama-tiny`, `llama-tiny-4l`, `xpert-8l`, `xpert-12l`, `xpert-16l`).
            overrides: config fields that replace the preset's (e.g. `{num_hidden_layers: 3}`).
        """
        self.preset = preset
        self.overrides = dict(overrides or {})
        _resolve_preset(DENSE_PRESETS, preset, self.overrides)

    def config(self, vocab_size: int | None = None) -> LlamaConfig:
        fields = _resolve_preset(DENSE_PRESETS, self.preset, self.overrides)
        if vocab_size is not None:
            fields["vocab_size"] = vocab_size
        return LlamaConfig(**fields, hidden_act="silu", tie_word_embeddings=False, pad_token_id=None)

    def build(self, vocab_size: int | None = None) -> PreTrainedModel:
        return LlamaForCausalLM(self.config(vocab_size))


class PretrainedCausalLM(ModelBuilder):
    """A causal LM loaded with `from_pretrained` from a local directory (or a hub id when online)."""

    def __init__(self, path: str, trust_remote_code: bool = False, dtype: str = "float32"):
        """
        Args:
            path: local directory written by `save_pretrained`, or a Hugging Face hub id.
            trust_remote_code: allow the checkpoint's own Python code to run; off unless you trust its source.
            dtype: parameter dtype to load in (`float32`, `bfloat16`, `float16`).
        """
        self.path = path
        self.trust_remote_code = trust_remote_code
        self.dtype = dtype

    def build(self, vocab_size: int | None = None) -> PreTrainedModel:
        model = load_causal_lm(self.path, trust_remote_code=self.trust_remote_code, dtype=getattr(torch, self.dtype))
        if vocab_size is not None and model.config.vocab_size != vocab_size:
            raise ValueError(
                f"{self.path} has vocab_size {model.config.vocab_size} but the tokenizer has {vocab_size}; "
                "use the tokenizer the model was trained with."
            )
        return model


def load_causal_lm(path: str | Path, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32):
    """`AutoModelForCausalLM.from_pretrained` with safe defaults (no remote code unless asked)."""
    return AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code, dtype=dtype)


def special_token_ids(tokenizer: Any) -> dict[str, int | None]:
    """The tokenizer's bos/eos/pad ids, keyed as Hugging Face configs name them (`bos_token_id`, ...)."""
    return {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}


def set_special_token_ids(model: PreTrainedModel, tokenizer: Any) -> dict[str, int | None]:
    """Write the tokenizer's bos/eos/pad ids into the model's config and generation config, in place.

    `save_pretrained` writes both to `config.json` and `generation_config.json`, so plain `generate()` on the saved
    model stops at the tokenizer's EOS. Call it on a built model, not at build time: a config's `pad_token_id` at
    construction becomes the embedding's `padding_idx`, which zeroes that row at init and freezes its gradient.

    Returns:
        The ids written.
    """
    ids = special_token_ids(tokenizer)
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None:
            for key, value in ids.items():
                setattr(config, key, value)
    return ids


UNTRAINED_MARKER = "untrained.json"


def make_untrained_copy(source: str, out_dir: str, seed: int = 0, trust_remote_code: bool = False) -> Path:
    """Save a freshly initialised model of the source's architecture (and its tokenizer) into `out_dir`.

    The control "the XPERT procedure without knowledge" runs analysis, selection, Tucker and adaptation on this copy.
    `untrained.json` records where it came from and the seed, so a bank built from it can be recognised.

    Args:
        source: the trained source (local HF directory, or a hub id when online); only its config and tokenizer
            are read.
        out_dir: directory of the untrained copy (written atomically).
        seed: seed of the fresh initialisation.
        trust_remote_code: allow the source's own Python code to run.
    """
    from transformers import AutoConfig, AutoTokenizer

    from xpert_pl.artifacts import atomic_directory, output_problems, write_json
    from xpert_pl.errors import raise_if_problems
    from xpert_pl.model_card import ModelFacts, write_model_card

    raise_if_problems(output_problems(out_dir, "untrained-source"))
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    tokenizer = None
    if Path(source).is_dir() and any(Path(source).glob("tokenizer*")):
        tokenizer = AutoTokenizer.from_pretrained(source)
        set_special_token_ids(model, tokenizer)
    facts = ModelFacts.of_model(model, method=f"untrained copy (seed {seed})", source=str(source), tokens_seen=0)
    with atomic_directory(out_dir, "untrained-source") as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_model_card(tmp, facts)
        write_json(tmp / UNTRAINED_MARKER, {"untrained_copy_of": str(source), "seed": seed})
    return Path(out_dir)
