"""Heatmaps of routing frequency (experts x domains per layer, as the paper's Figure 1) and of the consistency score.

Frequencies are shown as f * E so that 1.0 is an expert's uniform share; a diverging colour map centred on 1.0
separates over-used (red) from under-used (blue) experts. matplotlib is imported lazily with the Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xpert_pl.analysis.counter import ActivationCounts
from xpert_pl.analysis.selection import Selection

HIGHLIGHT = "#d62728"


def plot_layer_heatmaps(
    counts: ActivationCounts, out_dir: str | Path, selection: Selection | None = None
) -> list[Path]:
    """Write `layer_XX.png` per layer and `consistency.png`; selected experts are boxed and their labels red.

    Returns:
        The written paths, layers first, then `consistency.png`.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shares = (counts.frequency() * counts.num_experts).numpy()  # (L, D, E)
    selected = _selected(selection, counts.num_layers)
    paths = []
    for layer in range(counts.num_layers):
        fig = _layer_figure(plt, shares[layer].T, counts.domains, selected[layer], layer)
        paths.append(_save(plt, fig, out_dir / f"layer_{layer:02d}.png"))
    scores = (counts.num_experts * counts.frequency().min(dim=1).values).numpy()  # (L, E)
    paths.append(_save(plt, _consistency_figure(plt, scores, selected), out_dir / "consistency.png"))
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _selected(selection: Selection | None, num_layers: int) -> list[list[int]]:
    if selection is None:
        return [[] for _ in range(num_layers)]
    by_layer = {x.layer: list(x.experts) for x in selection.layers}
    return [by_layer.get(layer, []) for layer in range(num_layers)]


def _norm(values, vmax: float | None = None):
    from matplotlib.colors import TwoSlopeNorm

    top = max(2.0, float(values.max()) if values.size else 2.0) if vmax is None else vmax
    return TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=top)


def _layer_figure(plt, shares, domains: list[str], selected: list[int], layer: int):
    """Experts (rows) x domains (columns) of f * E for one layer."""
    from matplotlib.patches import Rectangle

    num_experts, num_domains = shares.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 * num_domains + 2.5), max(3.0, 0.2 * num_experts + 1.5)))
    norm = _norm(shares)
    image = ax.imshow(shares, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
    ax.set_xticks(range(num_domains), domains, rotation=30, ha="right")
    ax.set_yticks(range(num_experts), [str(e) for e in range(num_experts)], fontsize=8 if num_experts <= 32 else 6)
    for e in selected:
        ax.get_yticklabels()[e].set_color(HIGHLIGHT)
        ax.get_yticklabels()[e].set_fontweight("bold")
        ax.add_patch(Rectangle((-0.5, e - 0.5), num_domains, 1, fill=False, edgecolor=HIGHLIGHT, linewidth=1.5))
    if num_experts * num_domains <= 96:  # values stay legible only on small grids
        for (e, d), value in np.ndenumerate(shares):
            color = "white" if abs(float(norm(value)) - 0.5) > 0.3 else "black"  # legible on saturated cells
            ax.text(d, e, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("domain")
    ax.set_ylabel("expert")
    title = f"Layer {layer}\nrouting frequency x E (1 = uniform)"
    ax.set_title(title + ("\nselected experts boxed" if selected else ""), fontsize=10)
    fig.colorbar(image, ax=ax, label="f x E")
    return fig


def _consistency_figure(plt, scores, selected: list[list[int]]):
    """Layers (rows) x experts (columns) of s_l(e) = E * min_d f_{l,d}(e); selected experts dotted."""
    num_layers, num_experts = scores.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.22 * num_experts + 2.5), max(2.5, 0.35 * num_layers + 1.5)))
    image = ax.imshow(scores, aspect="auto", cmap="RdBu_r", norm=_norm(scores), interpolation="nearest")
    step = 1 if num_experts <= 32 else 2  # every other label keeps 64 experts readable
    ax.set_xticks(range(0, num_experts, step), [str(e) for e in range(0, num_experts, step)], fontsize=7)
    ax.set_yticks(range(num_layers), [str(layer) for layer in range(num_layers)], fontsize=8)
    points = [(e, layer) for layer, experts in enumerate(selected) for e in experts]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, s=12, facecolors="none", edgecolors="black", linewidths=1.0)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    title = "Consistency score E x min_d f\n(1 = uniform share in every domain)"
    ax.set_title(title + ("; circles: selected" if points else ""), fontsize=10)
    fig.colorbar(image, ax=ax, label="score")
    return fig


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
