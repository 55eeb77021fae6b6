"""The analysis step end to end: count routing, save counts, select experts, plot, and write a manifest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from xpert_pl.analysis.counter import COUNTS_META, COUNTS_TENSORS, ActivationCounts, count_activations
from xpert_pl.analysis.selection import ExpertSelector, Selection
from xpert_pl.artifacts import sha256_file, write_json
from xpert_pl.experts import UnsupportedModelError, moe_layers

SELECTION_FILE = "selection.json"
MANIFEST_FILE = "manifest.json"
HEATMAP_DIR = "heatmaps"


def run_analysis(
    model: PreTrainedModel,
    batches_by_domain: dict[str, Iterable[dict[str, torch.Tensor]]],
    out_dir: str | Path,
    selector: ExpertSelector,
    max_tokens_per_domain: int | None = None,
    meta: dict[str, Any] | None = None,
    plots: bool = True,
) -> tuple[ActivationCounts, Selection]:
    """Count expert activations per domain, select experts, and write the analysis artifacts into `out_dir`.

    Writes `counts.safetensors`, `counts.json`, `selection.json`, `heatmaps/*.png` (if `plots`) and
    `manifest.json` (sha256 of every file, `meta`, the model fingerprint, the selector's class and arguments).
    """
    out_dir = Path(out_dir)
    meta = {
        "model_fingerprint": model_fingerprint(model),
        "max_tokens_per_domain": max_tokens_per_domain,
        **(meta or {}),
    }
    counts = count_activations(model, batches_by_domain, max_tokens_per_domain=max_tokens_per_domain)
    counts.save(out_dir, extra_meta=meta)
    selection = selector.select(counts)
    selection.save(out_dir / SELECTION_FILE)
    files = [out_dir / COUNTS_TENSORS, out_dir / COUNTS_META, out_dir / SELECTION_FILE]
    if plots:
        from xpert_pl.analysis.plots import plot_layer_heatmaps

        files += plot_layer_heatmaps(counts, out_dir / HEATMAP_DIR, selection)
    manifest = {
        "files": {p.relative_to(out_dir).as_posix(): sha256_file(p) for p in files},
        "meta": meta,
        "selector": selector.describe(),
        "tokens": {d: int(t) for d, t in zip(counts.domains, counts.tokens.tolist(), strict=True)},
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return counts, selection


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short sha256 identifying a model: config, state-dict layout and the first/last router weights.

    Cheap enough for a 7B model (it hashes two router matrices, not all weights), yet two analyses of different
    checkpoints of one architecture still differ, since training moves the routers.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        # Private keys (`_name_or_path`, ...) and the library version vary with where and how a model was loaded.
        fields = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    state = model.state_dict()
    for key, tensor in state.items():
        digest.update(f"{key}:{tuple(tensor.shape)};".encode())
    for tensor in _probe_tensors(model, state):
        digest.update(tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _probe_tensors(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """First and last router weights of a supported MoE, else the first and last state-dict tensors."""
    try:
        layers = moe_layers(model)
        return [layers[0].router.weight, layers[-1].router.weight]
    except (UnsupportedModelError, AttributeError):
        values = list(state.values())
        return [values[0], values[-1]] if values else []
