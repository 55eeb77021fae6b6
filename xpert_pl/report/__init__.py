"""The experiment report: statistics over seeds, paired comparisons with scratch, convergence, effective tokens,
compute and provenance of a runs directory, as Markdown and a self-contained HTML page."""

from xpert_pl.report.build import build_blocks, write_report
from xpert_pl.report.runs import load_runs

__all__ = ["build_blocks", "load_runs", "write_report"]
