"""Warm start: copy weights from a Hugging Face directory or a Lightning checkpoint into a fresh model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xpert_pl.initializers import InitReport


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
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("rotary_emb.inv_freq")]:
        raise ValueError(
            f"init_checkpoint '{source}' does not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; warm start needs the same architecture."
        )
    return InitReport("WarmStart", sorted(state), {"source": str(path)})


def check_warm_start(source: str, vocab_size: int | None) -> None:
    """Refuse a warm start whose file is missing, or whose model (HF dir) has another vocabulary than the run's
    tokenizer, before any data work (a .ckpt is checked when it loads)."""
    from xpert_pl.errors import ConfigError

    path = Path(source)
    if not path.exists():
        raise ConfigError([f"--model.init_checkpoint '{source}' does not exist (give an HF model dir or a .ckpt file)"])
    config_file = path / "config.json"
    if path.is_dir() and config_file.is_file() and vocab_size is not None:
        import json

        vocab = json.loads(config_file.read_text()).get("vocab_size")
        if vocab is not None and vocab != vocab_size:
            raise ConfigError(
                [
                    f"--model.init_checkpoint '{source}' has vocab_size {vocab} but the tokenizer has {vocab_size}; "
                    "warm start with the tokenizer that model was trained with"
                ]
            )
