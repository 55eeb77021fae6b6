"""Figures of the report: validation-loss curves with seed bands, and final losses as bars with seed dots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Curve = tuple[Sequence[float], Sequence[float]]


def seed_band(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over seeds on the validation steps inside every seed's range.

    Runs of a cell share their validation steps; a resumed run may not, so each curve is linearly interpolated
    onto the union of steps (exact where the steps are shared).
    """
    arrays = [(np.asarray(s, dtype=float), np.asarray(v, dtype=float)) for s, v in curves if len(s)]
    if not arrays:
        empty = np.array([], dtype=float)
        return empty, empty, empty, empty
    low, high = max(s[0] for s, _ in arrays), min(s[-1] for s, _ in arrays)
    grid = np.unique(np.concatenate([s for s, _ in arrays]))
    grid = grid[(grid >= low) & (grid <= high)]
    table = np.array([np.interp(grid, s, v) for s, v in arrays])
    return grid, table.mean(axis=0), table.min(axis=0), table.max(axis=0)


# Scratch and XPERT keep their look in every figure; the other methods get a colour and a line style each, so no
# two of up to 28 methods look alike (10 colours would repeat from the 11th method on).
FIXED_STYLES = {"scratch": ("black", "-", 2.2), "xpert": ("#d62728", "-", 2.2)}
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
DASHES = ("--", ":", "-.", (0, (5, 1, 1, 1)))


def method_styles(methods: Sequence[str]) -> dict[str, tuple[Any, Any, float]]:
    """(colour, line style, width) per method: fixed for scratch and XPERT, a distinct pair for each other."""
    others = [m for m in methods if m not in FIXED_STYLES]
    pairs = [(c, d) for d in DASHES for c in COLOURS]
    styles = {m: FIXED_STYLES[m] for m in methods if m in FIXED_STYLES}
    styles |= {m: (*pairs[i % len(pairs)], 1.5) for i, m in enumerate(others)}
    return styles


def plot_loss_bands(curves: Mapping[str, Sequence[Curve]], path: Path, title: str) -> Path:
    """One line per method (mean over seeds) with a min-max band over seeds: validation loss against step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    styles = method_styles(list(curves))
    for method, runs in curves.items():
        steps, mean, low, high = seed_band(runs)
        if steps.size == 0:
            continue
        colour, dash, width = styles[method]
        label = f"{method} (n={len(runs)})"
        (line,) = ax.plot(steps, mean, label=label, color=colour, linestyle=dash, linewidth=width)
        if len(runs) > 1:
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
    ax.set(xlabel="optimizer step", ylabel="validation loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2 if len(curves) > 7 else 1)
    return _save(plt, fig, path)


def plot_source_beside_students(source: Curve, students: Mapping[str, Sequence[Curve]], path: Path, title: str) -> Path:
    """Validation loss against tokens seen (log scale): the source MoE's run beside the students' (mean over
    seeds, min-max band), so the reader sees how far the students are from the model they borrow from."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    ax.plot(*source, label="source MoE", color="#555", linestyle=(0, (1, 1)), linewidth=2.0)
    styles = method_styles(list(students))
    for method, runs in students.items():
        tokens, mean, low, high = seed_band(runs)
        if tokens.size:
            colour, dash, width = styles[method]
            ax.plot(tokens, mean, label=f"{method} (n={len(runs)})", color=colour, linestyle=dash, linewidth=width)
            ax.fill_between(tokens, low, high, color=colour, alpha=0.18, linewidth=0)
    ax.set_xscale("log")
    ax.set(xlabel="tokens seen", ylabel="validation loss (nats/token)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_final_bars(values: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """A bar per method at the mean final validation loss, one dot per seed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(values) + 2), 4.0), dpi=110)
    names = list(values)
    means = [float(np.mean(values[m])) for m in names]
    ax.bar(range(len(names)), means, color="#9bb7d4", edgecolor="#3d5a80")
    for i, method in enumerate(names):
        jitter = np.linspace(-0.15, 0.15, len(values[method])) if len(values[method]) > 1 else [0.0]
        ax.scatter(i + np.asarray(jitter), values[method], color="#222", s=14, zorder=3)
    all_values = [v for vs in values.values() for v in vs]
    pad = 0.15 * (max(all_values) - min(all_values) or 0.1 * abs(max(all_values)) or 1.0)
    # Bars start near the data, not at zero: differences of a few hundredths of a nat must stay visible.
    ax.set_ylim(min(all_values) - pad, max(all_values) + pad)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylabel="final validation loss (nats/token)", title=title)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    from xpert_pl.artifacts import atomic_path  # loads torch: only when a figure is written

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
        tmp.chmod(0o644)  # the atomic temp file is created owner-only
    plt.close(fig)
    return path
