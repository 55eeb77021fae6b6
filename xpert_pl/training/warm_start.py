"""Warm start: copy weights from a Hugging Face directory or a Lightning checkpoint into a fresh model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from xpert_pl.initializers import InitReport

if TYPE_CHECKING:
    from xpert_pl.models import ModelBuilder


def check_vocabularies(builder: ModelBuilder, init_checkpoint: str | None, tokenizer: Any) -> None:
    """Refuse a pretrained model (`PretrainedCausalLM`) or an HF-directory warm start whose vocabulary is not the
    tokenizer's, reading only config and tokenizer files: it runs before any weights are loaded.

    Raises:
        ConfigError: the model's vocab_size is not len(tokenizer), or the tokenizer it ships differs.
    """
    from xpert_pl.models import PretrainedCausalLM
    from xpert_pl.tokenizer import check_tokenizer_matches

    if isinstance(builder, PretrainedCausalLM):
        check_tokenizer_matches(tokenizer, builder.path, exact=True, trust_remote_code=builder.trust_remote_code)
    if init_checkpoint and Path(init_checkpoint).is_dir():
        check_tokenizer_matches(tokenizer, init_checkpoint, exact=True)


def load_warm_start(model: nn.Module, source: str) -> InitReport:
    """Load `source` (HF model dir with safetensors, or a `.ckpt` read with weights_only=True) into `model`."""
    path = Path(source)
    if path.is_dir():
        from transformers import AutoModelForCausalLM

        state = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False).state_dict()
    elif path.is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    else:
        raise FileNotFoundError(f"init_checkpoint '{source}' does not exist (give an HF model dir or a .ckpt file)")
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        # An embedding of another size is another vocabulary: the usual cause, so the message names the tokenizer.
        raise ValueError(
            f"init_checkpoint '{source}' has tensors of other shapes than the model (checkpoint vs model: "
            f"{', '.join(wrong[:3])}); warm start needs the same architecture and the tokenizer the checkpoint was "
            "trained with."
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("rotary_emb.inv_freq")]:
        raise ValueError(
            f"init_checkpoint '{source}' does not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; warm start needs the same architecture."
        )
    return InitReport("WarmStart", sorted(state), {"source": str(path)})


# What decides a model's computation beyond its tensors' shapes: a warm start into a model that differs in one of
# these (e.g. 8 heads where the checkpoint had 4, same shapes) would load every tensor and compute something else.
ARCHITECTURE_FIELDS = (
    "model_type",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "num_experts_per_tok",
    "norm_topk_prob",
    "clip_qkv",
)


def check_warm_start(source: str, builder: ModelBuilder | None = None) -> None:
    """Refuse a warm start whose file is missing, or (for an HF directory) whose architecture differs from the
    model the config builds, before any data work (its vocabulary: `check_vocabularies`)."""
    from xpert_pl.errors import ConfigError

    if not Path(source).exists():
        raise ConfigError([f"--model.init_checkpoint '{source}' does not exist (give an HF model dir or a .ckpt file)"])
    if builder is None or not hasattr(builder, "config") or not (Path(source) / "config.json").is_file():
        return
    from transformers import AutoConfig

    theirs = AutoConfig.from_pretrained(source, trust_remote_code=False).to_dict()
    ours = builder.config().to_dict()
    differ = [k for k in ARCHITECTURE_FIELDS if k in theirs and k in ours and theirs[k] != ours[k]]
    if differ:
        details = "; ".join(f"{k}: {theirs[k]!r} there, {ours[k]!r} here" for k in differ)
        raise ConfigError(
            [
                f"--model.init_checkpoint '{source}' is another architecture than --model.model builds ({details}); "
                "the weights would load but compute something else. Build the model it was trained as (its preset and "
                "overrides), or warm start from a model of this architecture"
            ]
        )
