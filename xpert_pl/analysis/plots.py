"""Figures of the routing statistics and of the expert selection, each written as PNG and SVG (same stem).

- `layer_XX`: experts x domains of the routing frequency per layer, as the paper's Figure 1.
- `consistency`: layers x experts of the consistency score E * min_d f.
- `selection_vs_n`: how a strategy's selection grows with n, and the share of routing the selected set covers.

Frequencies are shown as f * E so that 1.0 is an expert's uniform share; a diverging colour map centred on 1.0
separates over-used (red) from under-used (blue) experts. matplotlib is imported lazily with the Agg backend.
SVGs carry no date and a fixed id salt, so re-plotting the same statistics gives identical files (and manifest
checksums).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xpert_pl.analysis.counter import ActivationCounts
from xpert_pl.analysis.selection import ExpertSelector, Selection
from xpert_pl.artifacts import atomic_path

HIGHLIGHT = "#d62728"
SCALE = "viridis"  # sequential, perceptually uniform, readable in grey and by colour-blind readers
FORMATS = ("png", "svg")


def plot_layer_heatmaps(
    counts: ActivationCounts, out_dir: str | Path, selection: Selection | None = None
) -> list[Path]:
    """Write `layer_XX` per layer and `consistency`, as PNG and SVG; selected experts are boxed and their labels red.

    Returns:
        The written paths, layers first, then `consistency`; each figure's PNG before its SVG.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    shares = (counts.frequency() * counts.num_experts).numpy()  # (L, D, E)
    selected = _selected(selection, counts.layer_indices)
    top = _top(shares)  # one linear colour scale for every layer, so layers compare by colour
    paths = []
    for row, layer in enumerate(counts.layer_indices):
        fig = _layer_figure(plt, shares[row].T, counts.domains, selected[row], layer, top)
        paths += _save(plt, fig, out_dir / f"layer_{layer:02d}")
    scores = (counts.num_experts * counts.frequency().min(dim=1).values).numpy()  # (L, E)
    paths += _save(plt, _consistency_figure(plt, scores, selected, counts.layer_indices), out_dir / "consistency")
    return paths


def plot_selection_vs_n(
    counts: ActivationCounts, selector: ExpertSelector, out_dir: str | Path, ns: list[int] | None = None
) -> list[Path]:
    """Write `selection_vs_n` (PNG and SVG): the selector's choice for every n in `ns`, built by `selector.with_n`.

    Top panel, layers x experts: the colour of a cell is the smallest n at which the expert is selected (grey:
    not selected for any n in `ns`), and circles mark the selector's own n. Ranking strategies select nested sets
    (the set for n contains the set for n - 1), so this one grid shows every selection for E = 64 where a
    membership grid per layer would need 64; the title says whether the sets were nested. Bottom panel: the
    fraction of routed tokens covered by the selected set, sum_{e in S} c_l(e) / sum_e c_l(e) with counts pooled
    over domains (1 = all top-k assignments), one line per layer, against uniform routing n / E.

    Args:
        counts: the routing statistics.
        selector: the strategy; its arguments other than n are kept.
        out_dir: the folder written to.
        ns: the values of n, each in [1, num_experts]; None = 1..num_experts.

    Returns:
        The PNG path, then the SVG path.
    """
    ns = _check_ns(ns, counts.num_experts)
    selections = {k: selector.with_n(k).select(counts) for k in ns}
    first_n, nested = _first_selected(selections, counts.layer_indices, counts.num_experts)
    coverage = _coverage(counts, selections)
    own = selector.select(counts)  # the selector's own n, circled on the grid
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=_grid_size(counts.num_experts, counts.num_layers, extra_height=3.5), height_ratios=[1, 1]
    )
    _first_n_panel(fig, top, first_n, own, nested, counts.layer_indices)
    _coverage_panel(fig, bottom, ns, coverage, own.n, counts.num_experts)
    return _save(plt, fig, Path(out_dir) / "selection_vs_n")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _selected(selection: Selection | None, layer_indices: list[int]) -> list[list[int]]:
    """Selected experts per counted layer (rows follow `layer_indices`, the decoder-layer numbers)."""
    by_layer = {x.layer: list(x.experts) for x in selection.layers} if selection is not None else {}
    return [by_layer.get(layer, []) for layer in layer_indices]


def _top(values) -> float:
    """Upper end of a linear colour scale from 0: the largest value, at least 2 (twice the uniform share)."""
    return max(2.0, float(values.max()) if values.size else 2.0)


def _norm(top: float):
    from matplotlib.colors import Normalize

    return Normalize(vmin=0.0, vmax=top)


def _layer_figure(plt, shares, domains: list[str], selected: list[int], layer: int, top: float):
    """Experts (rows) x domains (columns) of f * E for one layer, on the linear colour scale [0, top]."""
    from matplotlib.patches import Rectangle

    num_experts, num_domains = shares.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 * num_domains + 2.5), max(3.0, 0.2 * num_experts + 1.5)))
    norm = _norm(top)
    image = ax.imshow(shares, aspect="auto", cmap=SCALE, norm=norm, interpolation="nearest")
    ax.set_xticks(range(num_domains), domains, rotation=30, ha="right")
    ax.set_yticks(range(num_experts), [str(e) for e in range(num_experts)], fontsize=8 if num_experts <= 32 else 6)
    for e in selected:
        ax.get_yticklabels()[e].set_color(HIGHLIGHT)
        ax.get_yticklabels()[e].set_fontweight("bold")
        ax.add_patch(Rectangle((-0.5, e - 0.5), num_domains, 1, fill=False, edgecolor=HIGHLIGHT, linewidth=1.5))
    if num_experts * num_domains <= 96:  # values stay legible only on small grids
        for (e, d), value in np.ndenumerate(shares):
            color = "white" if float(norm(value)) < 0.55 else "black"  # legible on dark (low) and light cells
            ax.text(d, e, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("domain")
    ax.set_ylabel("expert")
    title = f"Layer {layer}\nrouting frequency x E (1 = uniform)"
    ax.set_title(title + ("\nselected experts boxed" if selected else ""), fontsize=10)
    _uniform_mark(fig.colorbar(image, ax=ax, label="f x E (linear, same scale in every layer)"))
    return fig


def _consistency_figure(plt, scores, selected: list[list[int]], layer_indices: list[int]):
    """Layers (rows) x experts (columns) of s_l(e) = E * min_d f_{l,d}(e); selected experts dotted."""
    num_layers, num_experts = scores.shape
    fig, ax = plt.subplots(figsize=_grid_size(num_experts, num_layers))
    image = ax.imshow(scores, aspect="auto", cmap=SCALE, norm=_norm(_top(scores)), interpolation="nearest")
    _grid_ticks(ax, num_experts, layer_indices)
    points = _circle(ax, selected)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    title = "Consistency score E x min_d f\n(1 = uniform share in every domain)"
    ax.set_title(title + ("; circles: selected" if points else ""), fontsize=10)
    _uniform_mark(fig.colorbar(image, ax=ax, label="score (linear)"))
    return fig


def _uniform_mark(colorbar) -> None:
    """A line at 1 on the colour bar: the uniform share."""
    colorbar.ax.axhline(1.0, color="white", linewidth=1.2)


def _grid_size(num_experts: int, num_layers: int, extra_height: float = 0.0) -> tuple[float, float]:
    """Figure size of a layers x experts grid, wide enough for 64 expert columns."""
    return max(5.0, 0.22 * num_experts + 2.5), max(2.5, 0.35 * num_layers + 1.5) + extra_height


def _grid_ticks(ax, num_experts: int, layer_indices: list[int]) -> None:
    step = 1 if num_experts <= 32 else 2  # every other label keeps 64 experts readable
    ax.set_xticks(range(0, num_experts, step), [str(e) for e in range(0, num_experts, step)], fontsize=7)
    ax.set_yticks(range(len(layer_indices)), [str(layer) for layer in layer_indices], fontsize=8)


def _circle(ax, selected: list[list[int]], face: str = "none") -> bool:
    """Circle the selected (expert, layer) cells of a layers x experts grid; True if there were any."""
    points = [(e, layer) for layer, experts in enumerate(selected) for e in experts]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, s=12, facecolors=face, edgecolors="black", linewidths=1.0)
    return bool(points)


def _check_ns(ns: list[int] | None, num_experts: int) -> list[int]:
    if ns is None:
        return list(range(1, num_experts + 1))
    bad = [k for k in ns if not 1 <= k <= num_experts]
    if not ns or bad:
        raise ValueError(f"ns must be a non-empty list of values in [1, {num_experts}], got {ns}")
    return sorted(set(ns))


def _first_selected(
    selections: dict[int, Selection], layer_indices: list[int], num_experts: int
) -> tuple[np.ndarray, bool]:
    """(L, E) smallest n whose selection contains the expert (NaN: none), and whether the sets grow nested."""
    row = {layer: i for i, layer in enumerate(layer_indices)}
    first = np.full((len(layer_indices), num_experts), np.nan)
    nested, previous = True, None
    for k, selection in selections.items():  # ascending n
        for layer in selection.layers:
            for e in layer.experts:
                if np.isnan(first[row[layer.layer], e]):
                    first[row[layer.layer], e] = k
        if previous is not None:
            pairs = zip(previous.layers, selection.layers, strict=True)
            nested &= all(set(a.experts) <= set(b.experts) for a, b in pairs)
        previous = selection
    return first, nested


def _coverage(counts: ActivationCounts, selections: dict[int, Selection]) -> np.ndarray:
    """(L, len(ns)) share of the top-k assignments, pooled over domains, that go to the selected experts."""
    pooled = counts.counts.sum(dim=1).double().numpy()  # (L, E)
    total = np.maximum(pooled.sum(axis=1), 1.0)  # a layer that counted nothing covers 0, not NaN
    row = {layer: i for i, layer in enumerate(counts.layer_indices)}
    columns = [
        [pooled[row[x.layer], x.experts].sum() / total[row[x.layer]] for x in s.layers] for s in selections.values()
    ]
    return np.array(columns).T


def _first_n_panel(fig, ax, first_n: np.ndarray, own: Selection, nested: bool, layer_indices: list[int]) -> None:
    import matplotlib

    num_experts = first_n.shape[1]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")  # grey: never selected for the n plotted
    image = ax.imshow(np.ma.masked_invalid(first_n), aspect="auto", cmap=cmap, interpolation="nearest")
    _grid_ticks(ax, num_experts, layer_indices)
    _circle(ax, _selected(own, layer_indices), face="white")  # a white face stays visible on the darkest cells
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    how = "sets nested in n" if nested else "sets NOT nested: colour is the first n only"
    ax.set_title(f"{own.strategy}: smallest n that selects each expert\n{how}; circles: n = {own.n}", fontsize=10)
    fig.colorbar(image, ax=ax, label="first n")


def _coverage_panel(fig, ax, ns: list[int], coverage: np.ndarray, own_n: int, num_experts: int) -> None:
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    num_layers = coverage.shape[0]
    cmap, norm = matplotlib.colormaps["viridis"], Normalize(0, max(num_layers - 1, 1))
    marker = "o" if len(ns) <= 16 else None  # markers only where they do not merge into a line
    for layer in range(num_layers):
        ax.plot(ns, coverage[layer], color=cmap(norm(layer)), marker=marker, ms=3, lw=1.2, label=f"layer {layer}")
    (uniform,) = ax.plot(ns, [k / num_experts for k in ns], "--", color="grey", lw=1.0, label="uniform (n / E)")
    own = ax.axvline(own_n, linestyle=":", color="black", lw=1.0, label=f"selector's n = {own_n}")
    ax.set_xlabel("n (experts selected per layer)")
    ax.set_ylabel("share of routed tokens covered")
    ax.set_ylim(0.0, 1.02)
    ax.set_title("Routing covered by the selected set\n(counts pooled over domains)", fontsize=10)
    if num_layers <= 8:
        ax.legend(fontsize=7, ncol=2)
    else:  # a legend of 16+ layers hides the lines; a colour bar names them instead
        ax.legend(handles=[uniform, own], fontsize=7)
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="layer")


def _save(plt, fig, stem: Path) -> list[Path]:
    """Write `fig` as `<stem>.png` and `<stem>.svg`, each atomically, and close it."""
    fig.tight_layout()
    paths = []
    # No date and a fixed id salt keep the SVG byte-identical across runs on the same statistics.
    with plt.rc_context({"svg.hashsalt": "xpert_pl"}):
        for fmt in FORMATS:
            path = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
            paths.append(path)
    plt.close(fig)
    return paths
