"""Figures: heatmaps, consistency and selection-vs-n, each as a non-empty PNG and SVG, at E = 8 and E = 64."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xpert_pl.analysis import ConsistentExpertSelector, run_analysis
from xpert_pl.analysis.plots import _coverage, _first_selected, plot_layer_heatmaps, plot_selection_vs_n
from xpert_pl.analysis.run import write_analysis
from xpert_pl.analysis.strategies import DomainSpecialistSelector, RandomExpertSelector, TopFrequencySelector

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_figures(paths, stems: list[str]) -> None:
    """`paths` are exactly `<stem>.png, <stem>.svg` per stem, in order, each a non-empty file of its format."""
    assert [p.name for p in paths] == [f"{stem}.{fmt}" for stem in stems for fmt in ("png", "svg")]
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000
        if path.suffix == ".png":
            assert data[:8] == PNG_MAGIC
        else:
            assert data.lstrip().startswith(b"<?xml") and b"<svg" in data[:2000]


@pytest.mark.parametrize("experts", [8, 64])
def test_heatmaps_and_consistency_in_both_formats(random_counts, tmp_path, experts):
    counts = random_counts(layers=2, experts=experts)
    selection = ConsistentExpertSelector(n=4).select(counts)
    paths = plot_layer_heatmaps(counts, tmp_path / "h", selection)
    assert_figures(paths, ["layer_00", "layer_01", "consistency"])
    assert_figures(plot_layer_heatmaps(counts, tmp_path / "plain"), ["layer_00", "layer_01", "consistency"])


@pytest.mark.parametrize("experts", [8, 64])
def test_selection_vs_n_in_both_formats(random_counts, tmp_path, experts):
    counts = random_counts(layers=3, experts=experts)
    for selector in (ConsistentExpertSelector(n=2), RandomExpertSelector(n=3, seed=1)):
        paths = plot_selection_vs_n(counts, selector, tmp_path / type(selector).__name__)
        assert_figures(paths, ["selection_vs_n"])
    some = plot_selection_vs_n(counts, DomainSpecialistSelector("a"), tmp_path / "some", ns=[4, 1, 2])
    assert_figures(some, ["selection_vs_n"])


def test_svg_is_reproducible(random_counts, tmp_path):
    counts = random_counts(layers=2, experts=8)
    first = plot_selection_vs_n(counts, TopFrequencySelector(n=2), tmp_path / "a")
    second = plot_selection_vs_n(counts, TopFrequencySelector(n=2), tmp_path / "b")
    assert first[1].read_bytes() == second[1].read_bytes()


def test_selection_vs_n_rejects_bad_ns(random_counts, tmp_path):
    counts = random_counts(layers=1, experts=8)
    for ns in ([], [0, 2], [9]):
        with pytest.raises(ValueError, match="ns must be"):
            plot_selection_vs_n(counts, TopFrequencySelector(), tmp_path, ns=ns)


def test_first_selected_and_coverage_known_numbers(make_counts):
    # Pooled counts over the two domains: [5, 6, 6, 3] of 20 top-1 assignments.
    counts = make_counts([[[4, 3, 2, 1], [1, 3, 4, 2]]], [10, 10])
    selections = {k: TopFrequencySelector(n=k).select(counts) for k in (1, 2, 3, 4)}
    first, nested = _first_selected(selections, [0], 4)
    assert nested
    assert first.tolist() == [[3.0, 1.0, 2.0, 4.0]]  # ranking 1, 2, 0, 3
    assert _coverage(counts, selections)[0].tolist() == pytest.approx([6 / 20, 12 / 20, 17 / 20, 1.0])
    partial, _ = _first_selected({1: selections[1]}, [0], 4)
    assert np.isnan(partial[0, [0, 2, 3]]).all()


def test_run_analysis_writes_every_figure_in_both_formats(tiny_moe, make_batches, tmp_path):
    batches = {"a": make_batches(1, 2, 8, seed=0), "b": make_batches(1, 2, 8, seed=1)}
    run_analysis(tiny_moe, batches, tmp_path, RandomExpertSelector(n=2, seed=4))
    stems = [f"layer_{i:02d}" for i in range(4)] + ["consistency", "selection_vs_n"]
    figures = {f"heatmaps/{stem}.{fmt}" for stem in stems for fmt in ("png", "svg")}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"counts.safetensors", "counts.json", "selection.json"} | figures
    assert manifest["selector"] == {"class": "RandomExpertSelector", "n": 2, "seed": 4, "weighting": "uniform"}


def test_write_analysis_without_plots_writes_no_figures(random_counts, tmp_path):
    selection = write_analysis(random_counts(layers=2, experts=8), tmp_path, TopFrequencySelector(n=2), plots=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"counts.safetensors", "counts.json", "selection.json"}
    assert not (tmp_path / "heatmaps").exists() and selection.strategy == "top_frequency"


def test_every_layer_heatmap_shares_one_linear_colour_scale(random_counts, tmp_path, monkeypatch):
    import matplotlib.axes

    from xpert_pl.analysis import plots

    norms = []
    original = matplotlib.axes.Axes.imshow

    def recording(self, values, *args, **kwargs):
        norms.append(kwargs["norm"])
        return original(self, values, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", recording)
    counts = random_counts(layers=3, experts=8)
    plots.plot_layer_heatmaps(counts, tmp_path)
    layer_norms = norms[:-1]  # the last figure is the consistency grid, with its own scale
    shares = (counts.frequency() * counts.num_experts).numpy()
    assert len(layer_norms) == 3 and {(n.vmin, n.vmax) for n in layer_norms} == {(0.0, max(2.0, float(shares.max())))}
    assert all(type(n).__name__ == "Normalize" for n in norms)  # linear, not TwoSlopeNorm/LogNorm
