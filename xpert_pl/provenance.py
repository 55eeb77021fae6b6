"""Which source model an artifact was made from: one fingerprint, and the checks that refuse a mismatch.

The source fingerprint is a short sha256 of
- the config's architecture fields: the config normalised through its transformers class (so a `config.json`
  that omits default values and a live `PretrainedConfig` agree), without private keys (`_name_or_path`, ...),
  `transformers_version`, `torch_dtype`/`dtype`, `architectures` (written by `save_pretrained`, implied by
  `model_type`) and loading-time flags (`output_router_logits`, `use_cache`, ...), which vary with how a model
  was loaded, not with what it is;
- every MoE layer's router weight, cast to bfloat16: a float32 checkpoint loaded in bfloat16 (as `xpert analyze`
  does on GPUs) hashes the same as the float32 file, and training moves the routers, so two checkpoints of one
  architecture differ. (A float16 load of a float32 file rounds differently and is not covered.)

It is computed alike from a live model (its config and router modules) and from a checkpoint directory (its
`config.json` and the router tensors read by key, without loading the model). `xpert analyze` records it in
counts.json and selection.json (`source: {fingerprint, model}`), `extract_bank` in the bank manifest's `source`;
`xpert extract` and the initializers compare it with the source they are given before any expert is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from xpert_pl.errors import ConfigError
from xpert_pl.layout import COUNTS_FILE, SELECTION_FILE
from xpert_pl.sources.checkpoint import CheckpointExperts, open_expert_source
from xpert_pl.sources.experts import moe_layers
from xpert_pl.sources.families import config_dict, family_of

# Config keys that say how a model was loaded or run, not what it is.
LOADING_KEYS = frozenset(
    {
        "transformers_version",
        "torch_dtype",
        "dtype",
        "architectures",
        "output_router_logits",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "use_cache",
        "torchscript",
    }
)


class SourceMismatchError(ConfigError):
    """An artifact (selection, analysis, bank) was made from another source model than the one given."""


def architecture_fields(config: Any) -> dict[str, Any]:
    """The config's fields that identify the architecture (see the module docstring), as a plain dict."""
    fields = dict(config_dict(config))
    try:
        from transformers import CONFIG_MAPPING

        # Through the config class: defaults omitted from a config.json come back, as in a live config.
        fields = CONFIG_MAPPING[fields["model_type"]].from_dict(fields).to_dict()
    except (KeyError, ValueError, TypeError):
        pass  # a model type transformers does not know: its fields as written
    return {k: v for k, v in fields.items() if not k.startswith("_") and k not in LOADING_KEYS}


def source_fingerprint(source: str | os.PathLike | Any) -> str:
    """The source fingerprint of a checkpoint directory, a `CheckpointExperts` or a live MoE (16 hex digits).

    Raises:
        UnsupportedModelError: the model is not an MoE of a supported family.
        CheckpointError: a router weight is missing from the checkpoint.
    """
    if isinstance(source, (str, os.PathLike)):
        source = CheckpointExperts(source)
    if isinstance(source, CheckpointExperts):
        config = source.config
        routers = [(layer, lambda layer=layer: source.router_weight(layer)) for layer in source.moe_layer_indices()]
    else:
        config = source.config
        routers = [(moe.index, lambda moe=moe: moe.router.weight) for moe in moe_layers(source)]
    family_of(config)  # a non-MoE fails here with the list of supported families
    digest = hashlib.sha256(json.dumps(architecture_fields(config), sort_keys=True, default=str).encode())
    for layer, weight in routers:
        _update_router(digest, layer, weight)
    return digest.hexdigest()[:16]


def _update_router(digest: Any, layer: int, weight: Callable[[], torch.Tensor]) -> None:
    """Add one router weight, rounded to bfloat16, to `digest` (read one layer at a time to bound memory)."""
    tensor = weight().detach().to(device="cpu", dtype=torch.bfloat16).contiguous()
    digest.update(f"router{layer}:{tuple(tensor.shape)};".encode())
    digest.update(tensor.view(torch.int16).numpy().tobytes())  # numpy has no bfloat16: hash the raw bits


def source_record(fingerprint: str, model: str | os.PathLike | None = None) -> dict[str, Any]:
    """The `source` record an artifact carries: the fingerprint and the model's path or hub id."""
    return {"fingerprint": fingerprint, "model": None if model is None else str(model)}


def recorded_source(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An artifact's `source` record if it holds a fingerprint (a selection, counts.json or bank manifest)."""
    source = data.get("source") if isinstance(data, Mapping) else None
    if isinstance(source, Mapping) and isinstance(source.get("fingerprint"), str):
        return dict(source)
    return None


def _fix(kind: str, model: str, made_from: str | None) -> str:
    """The two ways out of a mismatch: remake the artifact from `model`, or give the source it was made from."""
    steps = "`xpert analyze`" if kind in ("selection", "analysis") else "`xpert analyze` and `xpert extract`"
    other = f" ({made_from})" if made_from else ""
    return f"re-run {steps} on {model}, or pass the source the {kind} was made from{other}"


def require_record(data: Mapping[str, Any] | None, kind: str, where: str | os.PathLike, model: str) -> dict[str, Any]:
    """The artifact's source record; SourceMismatchError when it records no fingerprint (older or hand-made)."""
    record = recorded_source(data)
    if record is None:
        raise SourceMismatchError(
            [
                f"{kind} {where} records no source fingerprint (made before xpert recorded provenance, or by hand), "
                f"so it cannot be checked against the source {model}: {_fix(kind, model, None)}"
            ]
        )
    return record


def check_same_source(
    record: Mapping[str, Any], kind: str, where: str | os.PathLike, model: str, fingerprint: str
) -> None:
    """Raise SourceMismatchError unless the artifact's source `record` has `fingerprint` (that of `model`)."""
    if record["fingerprint"] != fingerprint:
        made_from = record.get("model")
        raise SourceMismatchError(
            [
                f"{kind} {where} was made from another model: it records source fingerprint {record['fingerprint']}"
                f"{f' ({made_from})' if made_from else ''}, but the source {model} has fingerprint {fingerprint}: "
                f"{_fix(kind, model, made_from)}"
            ]
        )


def open_checked_source(
    data: Mapping[str, Any] | None, kind: str, where: str | os.PathLike, model: str, trust_remote_code: bool = False
) -> tuple[Any, str]:
    """Check an artifact against its source before any expert is read; returns the source opened by
    `open_expert_source` and its fingerprint.

    The record is required before the source is opened (a missing one costs nothing to refuse); the source's
    fingerprint reads only its config and router weights.
    """
    record = require_record(data, kind, where, model)
    source = open_expert_source(model, trust_remote_code)
    fingerprint = source_fingerprint(source)
    check_same_source(record, kind, where, model, fingerprint)
    return source, fingerprint


def analysis_record(analysis: str | os.PathLike) -> dict[str, Any] | None:
    """The source data of an analysis directory: selection.json's, else counts.json's (None if neither has one)."""
    from xpert_pl.artifacts import read_json

    for name in (SELECTION_FILE, COUNTS_FILE):
        path = Path(analysis) / name
        if path.is_file():
            data = read_json(path)
            if recorded_source(data) is not None:
                return data
    return None
