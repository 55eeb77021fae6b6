"""`xpert report <runs_dir>`: report.md, report.html (self-contained) and report.json from a matrix's runs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from xpert_pl.report import appendix, design, sections
from xpert_pl.report.comparison import RunComparison
from xpert_pl.report.render import Block, Heading, Paragraph, to_html, to_markdown
from xpert_pl.report.runs import RunsDir, load_runs
from xpert_pl.report.source import source_beside_students, source_section
from xpert_pl.report.verdict import verdict_section

log = logging.getLogger(__name__)


def write_report(
    runs_dir: str,
    out_dir: str | None = None,
    layer_heatmaps: bool = False,
) -> Path:
    """Write `report.md`, `report.html` (plots embedded, no external files) and `report.json` for a runs directory.

    Args:
        runs_dir: the `out_dir` of `xpert bench run` (holds `matrix.yaml`, `shared/`, `cells/`).
        out_dir: where to write (default `<runs_dir>/report`); figures go to `<out_dir>/figures/`.
        layer_heatmaps: also embed the per-layer routing heatmaps (one figure per source layer).

    Returns:
        The path of `report.md`.
    """
    runs = load_runs(runs_dir)
    # Imported here: xpert_pl.artifacts loads torch, which `xpert report --help` and a wrong runs_dir never need.
    from xpert_pl.artifacts import atomic_directory, check_replaceable

    out = Path(out_dir) if out_dir is not None else runs.root / "report"
    check_replaceable(out, "report")  # an existing folder is replaced only when it is an earlier report
    check_only_report_files(out)
    analysis = RunComparison(runs)
    title = f"XPERT report: {runs.root.resolve().name}"
    with atomic_directory(out, "report") as tmp:
        blocks = build_blocks(analysis, tmp / "figures", layer_heatmaps)
        _write_text(tmp / "report.md", to_markdown(blocks, tmp))
        _write_text(tmp / "report.html", to_html(blocks, title))
        _write_text(tmp / "report.json", json.dumps(_finite(analysis.summary()), indent=2) + "\n")
    report = out / "report.md"
    log.info("report written to %s (and report.html, report.json)", report)
    return report


REPORT_ENTRIES = frozenset({"report.md", "report.html", "report.json", "figures", "xpert_artifact.json"})


def check_only_report_files(out: Path) -> None:
    """An earlier report is replaced as a whole: refused when its folder also holds files a report does not write
    (e.g. a matrix.yaml or notes copied beside it), which would go with it."""
    from xpert_pl.errors import ConfigError

    foreign = sorted(p.name for p in out.iterdir() if p.name not in REPORT_ENTRIES) if out.is_dir() else []
    if foreign:
        raise ConfigError(
            [
                f"--out_dir '{out}' holds files a report does not write ({', '.join(foreign)}); replacing the report "
                "there would delete them. Move them out, or give another --out_dir"
            ]
        )


def build_blocks(analysis: RunComparison, figures: Path, layer_heatmaps: bool = False) -> list[Block]:
    """Every section of the report, in reading order (figures are written under `figures`)."""
    runs = analysis.runs
    blocks: list[Block] = [Heading(1, f"XPERT report: {runs.root.resolve().name}"), Paragraph(_overview(runs))]
    blocks += source_section(runs.layout)
    # The source's routing (heatmaps, selection) right after it: every verdict below is read against both.
    blocks += appendix.activation_section(runs, figures, layer_heatmaps)
    blocks += design.lr_sweep_section(runs.layout)
    blocks += verdict_section(analysis)
    blocks += sections.runs_section(runs)
    for scale, budget in analysis.headline_groups():
        blocks.append(Heading(2, f"Results: {scale}, budget {budget} ({_tokens(analysis, scale, budget)})"))
        blocks += sections.final_loss_section(analysis, scale, budget, figures)
        blocks += sections.paired_section(analysis, scale, budget)
        blocks += sections.eval_section(analysis, scale, budget, "rougeL/", "Rouge-L after SFT (mean ± std)")
        blocks += sections.eval_section(analysis, scale, budget, "lm_eval/", "lm-eval (mean ± std)")
        blocks += sections.eval_section(analysis, scale, budget, "sft/lm_eval/", "lm-eval after SFT (mean ± std)")
    blocks += sections.knowledge_section(analysis)
    blocks += design.knowledge_scale_section(analysis)
    blocks += design.budget_sweep_section(analysis)
    blocks += design.single_domain_section(analysis)
    blocks += sections.convergence_section(analysis)
    blocks += sections.effective_tokens_section(analysis)
    blocks += sections.compute_section(analysis)
    blocks += sections.wall_time_section(analysis)
    blocks += sections.curves_section(analysis, figures)
    blocks += source_beside_students(analysis, figures)
    blocks += design.crossings_section(analysis)
    blocks.append(Heading(2, "Appendix"))
    blocks += appendix.statistics_notes()
    blocks += appendix.bank_section(runs)
    blocks += appendix.environment_section()
    blocks += appendix.configs_section(runs)
    return blocks


def _write_text(path: Path, text: str) -> None:
    from xpert_pl.artifacts import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _overview(runs: RunsDir) -> str:
    usable = sum(c.usable for c in runs.cells)
    left_out = len(runs.incomplete()) + len(runs.absent)
    return (
        f"From `{runs.root}`: {usable} usable cell(s), {left_out} missing or incomplete (listed under Runs and "
        "excluded). Headline tables use each scale's largest token budget; `scratch` is the baseline, `xpert` is XPERT."
    )


def _tokens(analysis: RunComparison, scale: str, budget: str) -> str:
    tokens = analysis.runs.budget_tokens(scale, budget)
    return f"{tokens:.4g} tokens" if tokens else "token budget unknown"


def _finite(obj: Any) -> Any:
    """NaN and infinities as null: strict JSON has no spelling for them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
