"""The demo's report: selection, validation-loss curves of the students and their final numbers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from xpert_pl.artifacts import atomic_path


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """Rows of a CSVLogger `metrics.csv`, with empty cells dropped and values as floats."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.csv in {run_dir}; did the run finish?")
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def metric_curve(rows: list[dict[str, float]], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric, in step order."""
    points = sorted((int(r["step"]), r[name]) for r in rows if name in r and "step" in r)
    return [s for s, _ in points], [v for _, v in points]


def final_validation(rows: list[dict[str, float]]) -> dict[str, float]:
    """The last logged value of every `val/loss*` metric."""
    final: dict[str, float] = {}
    for row in rows:
        final.update({k: v for k, v in row.items() if k.startswith("val/loss")})
    return final


def plot_loss_curves(curves: dict[str, tuple[list[int], list[float]]], path: Path, title: str) -> Path:
    """One line per method: validation loss against optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, marker="o", markersize=3, label=label)
    ax.set(xlabel="optimizer step", ylabel="validation loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _selection_table(selection_path: Path) -> list[str]:
    selection = json.loads(selection_path.read_text())
    lines = [
        f"Strategy `{selection['strategy']}`, n = {selection['n']} of {selection['num_experts']} experts "
        f"(top-{selection['top_k']} routing); score: {selection['score']}.",
        "",
        "| layer | selected experts | weights | scores of the selected |",
        "|---:|---|---|---|",
    ]
    for layer in selection["layers"]:
        scores = [layer["scores"][e] for e in layer["experts"]]
        lines.append(f"| {layer['layer']} | {layer['experts']} | {_fmt_list(layer['weights'])} | {_fmt_list(scores)} |")
    return lines


def _fmt_list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def _final_table(finals: dict[str, dict[str, float]]) -> list[str]:
    methods = list(finals)
    keys = sorted({k for f in finals.values() for k in f}, key=lambda k: (k != "val/loss", k))
    lines = ["| metric | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for key in keys:
        cells = [f"{finals[m][key]:.4f}" if key in finals[m] else "-" for m in methods]
        lines.append(
            f"| {key.replace('val/loss/', 'val loss: ').replace('val/loss', 'val loss (all)')} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _verdict(finals: dict[str, dict[str, float]]) -> str:
    if not {"scratch", "xpert"} <= set(finals):
        return ""
    a, b = finals["xpert"].get("val/loss", math.nan), finals["scratch"].get("val/loss", math.nan)
    if a < b:
        return (
            f"XPERT ends with a lower validation loss than scratch ({a:.4f} vs {b:.4f}, "
            f"{b - a:.4f} nats/token better), one seed only: no spread is measured here."
        )
    return (
        f"XPERT does NOT beat scratch in this run ({a:.4f} vs {b:.4f}, {a - b:.4f} nats/token worse), "
        "one seed only: no spread is measured here."
    )


def write_demo_report(
    out: Path, methods: list[str], seed: int, timings: dict[str, float], cached: list[str], wall_s: float
) -> Path:
    """Write `<out>/report.md` and `<out>/loss_curves.png`; return the report's path."""
    runs = {m: out / "students" / m / f"seed{seed}" for m in methods}
    rows = {m: read_metrics(d) for m, d in runs.items()}
    curves = {m: metric_curve(r, "val/loss") for m, r in rows.items()}
    plot_loss_curves(curves, out / "loss_curves.png", f"Students, seed {seed}: validation loss")
    finals = {m: final_validation(r) for m, r in rows.items()}
    lines = [
        "# XPERT demo report",
        "",
        f"Seed {seed}; both students share the seed, the data order and the step budget; they differ only in "
        "the initializer of their FFN matrices. Wall time of this invocation: "
        f"{wall_s:.0f} s (stages reused from an earlier run are marked cached).",
        "",
        "## Stage timings (s)",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {k} | {'cached' if k in cached else f'{v:.1f}'} |" for k, v in timings.items()],
        "",
        "## Expert selection",
        "",
        *_selection_table(out / "analysis" / "selection.json"),
        "",
        "Per-layer routing heatmaps (experts x domains): `analysis/heatmaps/`.",
        "",
        "## Validation loss",
        "",
        "![validation loss](loss_curves.png)",
        "",
        *_final_table(finals),
        "",
        _verdict(finals),
        "",
        "## Exact configuration",
        "",
        *[f"- {m}: `{d / 'config.yaml'}`" for m, d in runs.items()],
    ]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return report
