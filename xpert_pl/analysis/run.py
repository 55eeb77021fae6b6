"""The analysis step end to end: count routing, save counts, select experts, plot, and write a manifest."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from xpert_pl.analysis.counter import COUNTS_META, COUNTS_TENSORS, ActivationCounts, count_activations
from xpert_pl.analysis.selection import ExpertSelector, Selection
from xpert_pl.artifacts import sha256_file, write_json
from xpert_pl.layout import SELECTION_FILE
from xpert_pl.provenance import source_fingerprint, source_record

# The one source fingerprint (see `xpert_pl.provenance`), under the name this module has always exported.
model_fingerprint = source_fingerprint

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

    The artifacts are those of `write_analysis`; `meta` gains the source fingerprint (and its `source` record,
    naming `meta["model"]` when given) and the token budget.
    """
    fingerprint = source_fingerprint(model)
    meta = {
        "model_fingerprint": fingerprint,
        "source": source_record(fingerprint, (meta or {}).get("model")),
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

    Writes `counts.safetensors`, `counts.json` (with `meta`), `selection.json` (with `meta["source"]`, the source
    record that `xpert extract` and the initializers check), if `plots` the figures in
    `heatmaps/` (per-layer heatmaps, consistency and `selection_vs_n`, the same selector for n = 1..E via
    `ExpertSelector.with_n`, each as PNG and SVG) and `manifest.json` (sha256 of every file, `meta`, the
    selector's class and arguments, tokens per domain).
    """
    out_dir = Path(out_dir)
    meta = dict(meta or {})
    counts.save(out_dir, extra_meta=meta)
    selection = selector.select(counts)
    if meta.get("source") is not None:
        selection.source = dict(meta["source"])
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
