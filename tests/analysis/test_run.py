"""Heatmaps and the end-to-end analysis step (artifacts, manifest, fingerprint)."""

from __future__ import annotations

import json

import torch

from xpert_pl.analysis import (
    ActivationCounts,
    ConsistentExpertSelector,
    Selection,
    model_fingerprint,
    plot_layer_heatmaps,
    run_analysis,
)
from xpert_pl.artifacts import sha256_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_heatmaps_written_per_layer(tmp_path):
    gen = torch.Generator().manual_seed(0)
    c = torch.randint(0, 50, (3, 2, 64), generator=gen)
    counts = ActivationCounts(["a", "b"], c, c.double(), c[0].sum(-1) // 2, top_k=2, num_experts=64)
    selection = ConsistentExpertSelector(n=4).select(counts)
    paths = plot_layer_heatmaps(counts, tmp_path / "h", selection)
    stems = ("layer_00", "layer_01", "layer_02", "consistency")
    assert [p.name for p in paths] == [f"{s}.{ext}" for s in stems for ext in ("png", "svg")]
    for path in paths:
        assert path.stat().st_size > 1000
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC
        else:
            assert b"<svg" in path.read_bytes()[:2000]


def test_run_analysis_writes_artifacts(tiny_moe, make_batches, tmp_path):
    batches = {"a": make_batches(2, 2, 8, seed=0), "b": make_batches(2, 2, 8, seed=1)}
    counts, selection = run_analysis(
        tiny_moe, batches, tmp_path, ConsistentExpertSelector(n=3), max_tokens_per_domain=20, meta={"model": "tiny"}
    )
    assert counts.tokens.tolist() == [20, 20]
    assert Selection.load(tmp_path / "selection.json") == selection
    assert selection.n == 3 and all(len(x.experts) == 3 for x in selection.layers)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    stems = ["consistency", "selection_vs_n", *(f"layer_{i:02d}" for i in range(4))]
    expected = {"counts.safetensors", "counts.json", "selection.json"}
    expected |= {f"heatmaps/{stem}.{ext}" for stem in stems for ext in ("png", "svg")}
    assert set(manifest["files"]) == expected
    assert all(sha256_file(tmp_path / name) == digest for name, digest in manifest["files"].items())
    assert manifest["selector"] == {"class": "ConsistentExpertSelector", "n": 3, "weighting": "frequency"}
    assert manifest["meta"]["model"] == "tiny"
    assert manifest["meta"]["model_fingerprint"] == model_fingerprint(tiny_moe)
    assert json.loads((tmp_path / "counts.json").read_text())["model_fingerprint"] == model_fingerprint(tiny_moe)


def test_fingerprint_is_stable_and_sensitive(tiny_moe):
    first = model_fingerprint(tiny_moe)
    assert first == model_fingerprint(tiny_moe) and len(first) == 16
    with torch.no_grad():
        tiny_moe.model.layers[-1].mlp.gate.weight[0, 0] += 1.0
    assert model_fingerprint(tiny_moe) != first
