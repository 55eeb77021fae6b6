"""The report's provenance: activation heatmaps, selection, source MoE, knowledge bank, statistics used, package
versions, the experiment matrix and the exact configs."""

from __future__ import annotations

import json
import platform
import re
import shutil
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from xpert_pl.layout import bank_manifest
from xpert_pl.report.render import Block, Bullets, Code, Figure, Heading, Paragraph, Table
from xpert_pl.report.runs import RunsDir, read_json_or_none
from xpert_pl.report.stats import MIN_SEEDS

PACKAGES = ("torch", "lightning", "transformers", "tensorly", "lm_eval", "datasets", "numpy", "scipy", "matplotlib")


def activation_section(runs: RunsDir, figures: Path, layer_heatmaps: bool = False) -> list[Block]:
    """The analysis' consistency and selection-vs-n figures (copied next to the report), and the selection."""
    heatmaps = runs.layout.analysis / "heatmaps"
    patterns = ["consistency*.png", "selection_vs_n*.png", *(["layer_*.png"] if layer_heatmaps else [])]
    sources = [p for pattern in patterns for p in sorted(heatmaps.glob(pattern))] if heatmaps.is_dir() else []
    blocks: list[Block] = [Heading(2, "Expert activation")]
    for source in sources:
        target = figures / f"activation_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        blocks.append(Figure(target, f"`shared/analysis/heatmaps/{source.name}`"))
    blocks += _selection_blocks(runs.layout.selection)
    return blocks if len(blocks) > 1 else []


def _selection_blocks(path: Path) -> list[Block]:
    selection = read_json_or_none(path)
    if not selection:
        return []
    text = (
        f"Selection: strategy `{selection.get('strategy')}`, n = {selection.get('n')} of "
        f"{selection.get('num_experts')} experts (top-{selection.get('top_k')} routing); "
        f"score: {selection.get('score')}."
    )
    rows = [
        [str(layer.get("layer")), str(layer.get("experts")), ", ".join(f"{w:.3f}" for w in layer.get("weights", []))]
        for layer in selection.get("layers", [])
    ]
    return [Paragraph(text), Table(["layer", "selected experts", "weights"], rows, (True, False, False))]


def statistics_notes() -> list[Block]:
    items = [
        "Every number comes from cells whose `cell.json` says `done`; the others are listed under Runs, "
        "never averaged.",
        "Spread: mean ± sample standard deviation (ddof = 1) over seeds.",
        "Paired comparisons use the seeds both methods have (same weights seed and data order): mean difference, "
        "two-sided paired t-test (`scipy.stats.ttest_rel`) and that test's 95% t interval of the mean difference "
        "(`.confidence_interval(0.95)`), so the interval excludes 0 exactly when p < 0.05.",
        f"An interval and a test need at least {MIN_SEEDS} paired seeds; with fewer the report says 'too few seeds'. "
        "When every seed differs by the same amount there is no spread, hence no test and no verdict.",
        "Verdicts read the t interval: better or worse when it excludes 0 (p < 0.05), not distinguishable when it "
        "includes 0. With 3-5 seeds only large differences can be told apart.",
        "XPERT is tested against several baselines, so some p < 0.05 are expected by chance alone; the verdict also "
        "gives Benjamini-Hochberg adjusted p-values over XPERT's tests on each scale "
        "(`scipy.stats.false_discovery_control`) and says which verdicts hold after adjustment.",
    ]
    return [Heading(3, "Statistics used"), Bullets(items)]


def bank_section(runs: RunsDir) -> list[Block]:
    """Tucker settings, ranks and relative reconstruction errors of the knowledge bank."""
    manifest = read_json_or_none(bank_manifest(runs.layout.bank))
    if not manifest:
        return []
    tucker = manifest.get("tucker") or {}
    settings = ", ".join(f"{k} = {tucker[k]}" for k in ("ranks", "energy", "algorithm") if k in tucker)
    rows = []
    for layer in manifest.get("layers", []):
        for name, entry in (layer.get("matrices") or {}).items():
            error = entry.get("relative_error")
            rows.append(
                [
                    str(layer.get("layer")),
                    str(layer.get("source_layers", "")),
                    name,
                    str(entry.get("shape")),
                    str(entry.get("ranks")),
                    "-" if error is None else f"{error:.4f}",
                    str(entry.get("algorithm", "")),
                ]
            )
    header = ["layer", "source layers", "matrix", "shape", "Tucker ranks", "relative error", "algorithm"]
    return [
        Heading(3, "Knowledge bank"),
        Paragraph(f"Tucker: {settings}; grouping: {manifest.get('grouping')}."),
        Table(header, rows, (True, False, False, False, False, True, False)),
    ]


def package_versions() -> dict[str, str]:
    """Versions of the packages that matter, of Python and of the platform, where this report was written."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        versions[name] = _version(name)
    return versions


def _version(name: str) -> str:
    for candidate in (name, name.replace("_", "-")):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def environment_section() -> list[Block]:
    rows = [[k, v] for k, v in package_versions().items()]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = f"Written {date}, by the environment that wrote this report (the runs may have used another one)."
    return [Heading(3, "Package versions"), Paragraph(note), Table(["package", "version"], rows)]


def configs_section(runs: RunsDir) -> list[Block]:
    """`matrix.yaml` verbatim, then per (scale, budget, method) the exact config and objective of its first seed."""
    blocks: list[Block] = [Heading(3, "Experiment matrix and configs")]
    blocks.append(Paragraph("In the cells' configs, paths inside the runs folder are written `<runs_dir>/...`."))
    if runs.matrix_text is not None:
        blocks.append(Code(runs.matrix_text, "yaml", "matrix.yaml (verbatim)"))
    else:
        blocks.append(Paragraph("No `matrix.yaml` in the runs directory."))
    seen: set[tuple[str, str, str]] = set()
    for cell in sorted(runs.cells, key=lambda c: (not c.usable, c.scale, c.budget, c.method, c.seed)):
        key = (cell.scale, cell.budget, cell.method)
        config = cell.path / "config.yaml"
        if key in seen or not config.is_file():
            continue
        seen.add(key)
        where = f"{cell.scale}/{cell.budget}/{cell.method}/seed{cell.seed}"
        text = runs_relative(config.read_text(), runs.root)
        blocks.append(Code(text, "yaml", f"{where}/config.yaml (other seeds: their cell directories)"))
        objective = read_json_or_none(cell.path / "objective.json")
        if objective:
            text = runs_relative(json.dumps(objective, indent=2), runs.root)
            blocks.append(Code(text, "json", f"{where}/objective.json"))
    return blocks


def runs_relative(text: str, root: Path) -> str:
    """`text` with the runs folder's absolute path written `<runs_dir>`, so a committed report names no machine's
    folders and reads the same wherever the runs folder is moved."""
    pattern = re.escape(str(root.resolve())) + r"(?=[/\s\"',]|$)"
    return re.sub(pattern, "<runs_dir>", text, flags=re.MULTILINE)
