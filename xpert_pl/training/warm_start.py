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


def check_warm_start(source: str) -> None:
    """Refuse a warm start whose file is missing before any data work (its vocabulary: `check_vocabularies`)."""
    from xpert_pl.errors import ConfigError

    if not Path(source).exists():
        raise ConfigError([f"--model.init_checkpoint '{source}' does not exist (give an HF model dir or a .ckpt file)"])
