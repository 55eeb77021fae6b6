"""Re-derive the paired t intervals of a committed report whose runs directory is gone (bench-small, 2026-11-23).

That report was written when paired comparisons used a 95% percentile bootstrap, far too narrow over 3-5 seeds.
Its `report.json` kept, for every comparison with scratch, the seeds, the mean difference and the paired t-test's
p-value, from which the t interval follows exactly (`t_interval_from_p`); it kept no per-seed values. XPERT against
the other methods (verdict, "Knowledge or statistics?") was only in `report.md`: the mean difference is the
difference of the two methods' exact mean differences with scratch (same seeds), the p-value is read from the old
verdict sentence (3 significant digits). Steps-fraction comparisons are recomputed exactly from the per-seed
fractions `report.json` kept.

Rewrites `report.json` (intervals, directions, `xpert_vs` entries) and, in `report.md` and `report.html`, a note at
the top, the verdict, the paired tables, "Knowledge or statistics?" and the statistics notes, rendered by the
report's own section code; everything else is left as it was. Running it again changes nothing.

Run: `.venv/bin/python benchmarks/rederive_t_intervals.py [report_dir]` (default `benchmarks/results/bench-small`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpert_pl.experiments.matrix import BASELINE
from xpert_pl.report import appendix, sections
from xpert_pl.report.build import _finite
from xpert_pl.report.comparison import VAL_LOSS, RunComparison, paired_dict
from xpert_pl.report.render import Block, Bullets, Paragraph, to_html, to_markdown
from xpert_pl.report.runs import XPERT, CellRun, RunsDir
from xpert_pl.report.stats import MIN_SEEDS, Paired, paired, t_interval_from_p
from xpert_pl.report.verdict import verdict_section

DERIVED = "paired t, 95%, derived from mean_diff and p_value (per-seed values not kept)"
PRINTED = "report.md's verdict sentence (3 significant digits)"
NOTE_MARK = "Statistics re-derived"
NOTE = (
    f"**{NOTE_MARK} (the runs directory was no longer available).** This report was first written with 95% "
    "percentile bootstrap intervals, which over 3-5 seeds are far too narrow: with no true difference they exclude 0 "
    "in about 24% of cases at 3 seeds and 17% at 5, not 5%. Every interval, verdict and reading in the verdict, the "
    'paired tables and "Knowledge or statistics?" is now the paired t-test\'s 95% t interval, **derived from the '
    "recorded mean difference and p-value** (|t| = t.isf(p/2, n-1), se = |mean difference| / |t|, interval = mean "
    "difference ± t.isf(0.025, n-1) · se), because this version of the report did not keep the per-seed values: "
    "exact for comparisons with scratch (full-precision numbers in report.json); for XPERT against the other "
    "methods the p-value is the 3-significant-digit one printed in the old verdict, so those interval ends may be "
    "off in the last digit; steps-fraction comparisons are recomputed exactly from the recorded per-seed "
    "fractions. 'not recoverable': mean difference 0 and p = 1 leave the standard error unknown. Every other "
    "section, figure and number is as first written (`benchmarks/rederive_t_intervals.py`)."
)
OLD_VERDICT = re.compile(
    r"^- (?P<where>\S+): XPERT is \*\*[^*]+\*\* (?:than|from) `(?P<other>[^`]+)`.*?\(mean difference "
    r"(?P<mean>[+-][\d.]+) nats/token, 95% [^,]+, p = (?P<p>[^,]+), (?P<n>\d+) seeds\)",
    re.MULTILINE,
)


def recorded_paired(entry: dict[str, Any]) -> Paired:
    """A comparison from its report.json entry: exact from per-seed values when kept, else from mean and p."""
    seeds = tuple(entry["seeds"])
    if entry.get("a") is not None and entry.get("b") is not None:
        return paired(dict(zip(seeds, entry["a"], strict=True)), dict(zip(seeds, entry["b"], strict=True)))
    mean = math.nan if entry["mean_diff"] is None else float(entry["mean_diff"])
    if len(seeds) < MIN_SEEDS:
        return Paired(seeds, mean, None, None, None)
    if entry["p_value"] is None:  # NaN in JSON: constant differences
        return Paired(seeds, mean, None, None, math.nan)
    interval = t_interval_from_p(len(seeds), mean, float(entry["p_value"]))
    return Paired(seeds, mean, *(interval or (None, None)), float(entry["p_value"]))


def recorded_dict(result: Paired) -> dict[str, Any]:
    """`paired_dict`, saying where the interval came from when the per-seed values are missing."""
    entry = paired_dict(result)
    if result.a is None:
        entry["interval"] = DERIVED
    return entry


def printed_p_values(markdown: str) -> dict[tuple[str, str], tuple[float, int, float]]:
    """(where, other) -> (p, seeds, mean difference) of XPERT's verdict sentences as printed in report.md."""
    found = {}
    for match in OLD_VERDICT.finditer(markdown):
        p = math.nan if match["p"].startswith("n/a") else float(match["p"])
        found[(match["where"], match["other"])] = (p, int(match["n"]), float(match["mean"]))
    return found


def xpert_vs_entry(methods: dict[str, Any], other: str, printed: tuple[float, int, float] | None) -> dict | None:
    """XPERT minus `other` on the final loss, from both methods' comparisons with scratch and the printed p."""
    xpert = methods[XPERT]["vs_scratch"][VAL_LOSS]
    if other == BASELINE:
        return dict(xpert)
    mine = methods[other]["vs_scratch"][VAL_LOSS]
    if printed is None or mine["seeds"] != xpert["seeds"]:
        return None  # no verdict printed, or other seeds than scratch's: the mean difference would not follow
    p, n, rounded = printed
    mean = xpert["mean_diff"] - mine["mean_diff"]
    if n != len(xpert["seeds"]) or abs(mean - rounded) > 5e-5 + 1e-12:
        raise ValueError(f"report.md's verdict on XPERT vs {other} does not match report.json ({rounded}, {mean})")
    p_value = None if math.isnan(p) else p
    return {"seeds": xpert["seeds"], "mean_diff": mean, "p_value": p_value, "p_value_source": PRINTED}


def fractions_entry(methods: dict[str, Any], other: str) -> dict[str, Any]:
    """XPERT minus `other` on the steps fraction, exactly, over the seeds where both reached scratch's final loss."""
    a, b = ({int(s): v for s, v in methods[m]["steps_fraction"].items() if v is not None} for m in (XPERT, other))
    return paired_dict(paired(a, b))


def add_xpert_vs(summary: dict[str, Any], markdown: str) -> None:
    """Give every method of a group with XPERT its `xpert_vs` comparisons (kept when already there)."""
    printed = printed_p_values(markdown)
    for group in summary["groups"]:
        methods, where = group["methods"], f"{group['scale']}/{group['budget']}"
        if XPERT not in methods:
            continue
        for other in [m for m in methods if m != XPERT and "xpert_vs" not in methods[m]]:
            loss = xpert_vs_entry(methods, other, printed.get((where, other)))
            if loss is not None:
                methods[other]["xpert_vs"] = {VAL_LOSS: loss, "steps_fraction": fractions_entry(methods, other)}


def rederive(summary: dict[str, Any]) -> None:
    """Rewrite every comparison's interval and direction in place (idempotent: the inputs are never changed)."""
    for group in summary["groups"]:
        for entry in group["methods"].values():
            for name in ("vs_scratch", "xpert_vs"):
                comparisons = entry.get(name, {})
                for key, value in comparisons.items():
                    source = {"p_value_source": value["p_value_source"]} if "p_value_source" in value else {}
                    comparisons[key] = recorded_dict(recorded_paired(value)) | source


@dataclass
class RecordedAnalysis(RunComparison):
    """What the statistics sections read, served from a report.json instead of a runs directory."""

    summary: dict[str, Any] = field(default_factory=dict)

    def group(self, scale: str, budget: str) -> dict[str, Any]:
        return next(g for g in self.summary["groups"] if (g["scale"], g["budget"]) == (scale, budget))

    def headline_groups(self) -> list[tuple[str, str]]:
        return [(g["scale"], g["budget"]) for g in self.summary["groups"] if g["headline"]]

    def metric_keys(self, scale: str, budget: str, prefix: str) -> list[str]:
        methods = self.group(scale, budget)["methods"].values()
        return sorted({k for e in methods for k in [*e["final"], *e.get("vs_scratch", {})] if k.startswith(prefix)})

    def compare(self, scale: str, budget: str, a: str, b: str, key: str = VAL_LOSS) -> Paired:
        methods = self.group(scale, budget)["methods"]
        if b == BASELINE:
            return recorded_paired(methods[a]["vs_scratch"][key])
        if a == XPERT and key == VAL_LOSS and "xpert_vs" in methods[b]:
            return recorded_paired(methods[b]["xpert_vs"][key])
        return Paired((), math.nan, None, None, None)  # not recorded: reads as 'too few seeds'

    def fractions(self, scale: str, budget: str, method: str) -> dict[int, float | None]:
        return {int(s): v for s, v in self.group(scale, budget)["methods"][method]["steps_fraction"].items()}


def recorded_analysis(summary: dict[str, Any], root: Path) -> RecordedAnalysis:
    """A `RecordedAnalysis` whose runs list each method's seeds, in report.json's (the report's) method order."""
    cells = [
        CellRun(g["scale"], g["budget"], method, seed, "done", root)
        for g in summary["groups"]
        for method, entry in g["methods"].items()
        for seed in entry["seeds"]
    ]
    order = list(dict.fromkeys(c.method for c in cells))
    return RecordedAnalysis(RunsDir(root, cells, [], None, order), summary)


@dataclass(frozen=True)
class Format:
    """One of the report's two renderings: how its headings and the note's first characters look."""

    html: bool

    @property
    def note(self) -> str:
        return f"<p><strong>{NOTE_MARK}" if self.html else f"**{NOTE_MARK}"

    def render(self, blocks: list[Block], base: Path) -> str:
        """The blocks as they appear inside the document, followed by the separator before the next block."""
        if self.html:
            page = to_html(blocks, "")
            return page[page.index("<body>\n") + len("<body>\n") : page.rindex("\n</body>")] + "\n"
        return to_markdown(blocks, base) + "\n"

    def headings(self, text: str) -> list[tuple[int, int, str]]:
        """(offset, level, text) of every heading line."""
        if self.html:
            return [(m.start(), int(m[1]), m[2]) for m in re.finditer(r"^<h([1-6])>(.*)</h\1>$", text, re.MULTILINE)]
        return [(m.start(), len(m[1]), m[2]) for m in re.finditer(r"^(#{1,6}) (.*)$", text, re.MULTILINE)]


MARKDOWN, HTML = Format(html=False), Format(html=True)


def section_span(text: str, fmt: Format, title: str, after: str | None = None) -> tuple[int, int]:
    """Offsets of the section whose heading starts with `title` (the first one after heading `after`), up to the
    next heading of the same or a higher level."""
    headings = fmt.headings(text)
    first = 0 if after is None else next(i for i, h in enumerate(headings) if h[2].startswith(after))
    index = next(i for i in range(first, len(headings)) if headings[i][2].startswith(title))
    start, level = headings[index][:2]
    end = next((h[0] for h in headings[index + 1 :] if h[1] <= level), len(text))
    return start, end


def splice(text: str, fmt: Format, replacements: list[tuple[str, str | None, list[Block]]], base: Path) -> str:
    """Replace each (title, after) section by the blocks' rendering; the verdict also takes the note before it."""
    for title, after, blocks in replacements:
        start, end = section_span(text, fmt, title, after)
        if title == "Verdict" and fmt.note in text[:start]:
            start = text.index(fmt.note)
        text = text[:start] + fmt.render(blocks, base) + text[end:]
    return text


def replacements(analysis: RecordedAnalysis) -> list[tuple[str, str | None, list[Block]]]:
    """The re-rendered sections: (heading title, the heading it follows, blocks)."""
    found: list[tuple[str, str | None, list[Block]]] = [
        ("Verdict", None, [Paragraph(NOTE), *verdict_section(analysis)])
    ]
    for scale, budget in analysis.headline_groups():
        results = f"Results: {scale}, budget {budget} ("
        found.append(("Paired comparison with scratch", results, sections.paired_section(analysis, scale, budget)))
    found.append(("Knowledge or statistics?", None, sections.knowledge_section(analysis)))
    heading, notes = appendix.statistics_notes()
    assert isinstance(notes, Bullets)
    derived = "In this report the intervals were derived from the recorded mean difference and p-value (see the top)."
    found.append(("Statistics used", "Appendix", [heading, Bullets([*notes.items, derived])]))
    return found


def main(report_dir: Path) -> None:
    """Re-derive report.json's comparisons, then re-render the statistics sections of report.md and report.html."""
    markdown_path, html_path, json_path = (report_dir / f"report.{ext}" for ext in ("md", "html", "json"))
    summary = json.loads(json_path.read_text(encoding="utf-8"))
    markdown = markdown_path.read_text(encoding="utf-8")
    add_xpert_vs(summary, markdown)
    rederive(summary)
    json_path.write_text(json.dumps(_finite(summary), indent=2) + "\n", encoding="utf-8")
    summary = json.loads(json_path.read_text(encoding="utf-8"))  # as written: NaN read back as null, like a rerun
    analysis = recorded_analysis(summary, Path("runs") / report_dir.name)
    found = replacements(analysis)
    markdown_path.write_text(splice(markdown, MARKDOWN, found, report_dir), encoding="utf-8")
    page = html_path.read_text(encoding="utf-8")
    html_path.write_text(splice(page, HTML, found, report_dir), encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", nargs="?", type=Path, default=Path("benchmarks/results/bench-small"))
    main(parser.parse_args().report_dir)
