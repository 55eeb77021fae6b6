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

    The artifacts are those of `write_analysis`; `meta` gains the model fingerprint and the token budget.
    """
    meta = {
        "model_fingerprint": model_fingerprint(model),
        "max_tokens_per_domain": max_tokens_per_domain,
        **(meta or {}),
    }
    counts = count_activations(model, batches_by_domain, max_tokens_per_domain=max_tokens_per_domain)
    selection = write_analysis(counts, out_dir, selector, meta, plots)
    return counts, selection


def write_analysis(
    counts: ActivationCounts,
    out_dir: str | Path,
    selector: ExpertSelector,
    meta: dict[str, Any] | None = None,
    plots: bool = True,
) -> Selection:
    """Write the artifacts of an analysis from counts made elsewhere (any device count or precision).

    Writes `counts.safetensors`, `counts.json` (with `meta`), `selection.json`, if `plots` the figures in
    `heatmaps/` (per-layer heatmaps, consistency and `selection_vs_n`, the same selector for n = 1..E via
    `ExpertSelector.with_n`, each as PNG and SVG) and `manifest.json` (sha256 of every file, `meta`, the
    selector's class and arguments, tokens per domain).
    """
    out_dir = Path(out_dir)
    meta = dict(meta or {})
    counts.save(out_dir, extra_meta=meta)
    selection = selector.select(counts)
    selection.save(out_dir / SELECTION_FILE)
    files = [out_dir / COUNTS_TENSORS, out_dir / COUNTS_META, out_dir / SELECTION_FILE]
    if plots:
        from xpert_pl.analysis.plots import plot_layer_heatmaps, plot_selection_vs_n

        files += plot_layer_heatmaps(counts, out_dir / HEATMAP_DIR, selection)
        files += plot_selection_vs_n(counts, selector, out_dir / HEATMAP_DIR)
    manifest = {
        "files": {p.relative_to(out_dir).as_posix(): sha256_file(p) for p in files},
        "meta": meta,
        "selector": selector.describe(),
        "tokens": {d: int(t) for d, t in zip(counts.domains, counts.tokens.tolist(), strict=True)},
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return selection


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
