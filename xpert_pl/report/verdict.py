"""The report's verdict: XPERT against every other method and every method against scratch, paired by seed, with
the tests of XPERT adjusted for their number (Benjamini-Hochberg)."""

from __future__ import annotations

from xpert_pl.experiments.matrix import BASELINE
from xpert_pl.report.comparison import RunComparison
from xpert_pl.report.render import Block, Bullets, Heading, Paragraph
from xpert_pl.report.runs import XPERT
from xpert_pl.report.sections import fmt_details, fmt_interval, fmt_p
from xpert_pl.report.stats import Paired, bh_adjusted


def verdict_sentence(subject: str, other: str, result: Paired, where: str) -> str:
    """A plain sentence: is `subject`'s final validation loss lower, higher or indistinguishable from `other`'s?"""
    name = "XPERT" if subject == XPERT else f"`{subject}`"
    other_name = "XPERT" if other == XPERT else f"`{other}`"
    if not result.tested:
        tail = f" XPERT is not shown to beat {other_name}." if subject == XPERT else ""
        if result.direction == "constant":
            return (
                f"{where}: {name} vs {other_name}: every seed differs by {result.mean_diff:+.4f} ({result.n} seeds): "
                f"no spread, so no test and no verdict.{tail}"
            )
        difference = "no paired seed" if result.n == 0 else f"mean difference {result.mean_diff:+.4f}"
        return f"{where}: {name} vs {other_name}: too few seeds ({result.n} paired; {difference}).{tail}"
    numbers = f"(mean difference {result.mean_diff:+.4f} nats/token, {fmt_interval(result)}, {fmt_details(result)})"
    tail = f" XPERT does not beat {other_name} here." if subject == XPERT else ""
    lead = f"{where}: {name} is"
    if result.direction == "lower":
        return f"{lead} **better** than {other_name}: its final validation loss is lower {numbers}."
    if result.direction == "higher":
        return f"{lead} **worse** than {other_name}: its final validation loss is higher {numbers}.{tail}"
    return f"{lead} **not distinguishable** from {other_name}: the interval includes 0 {numbers}.{tail}"


def verdict_section(analysis: RunComparison) -> list[Block]:
    """XPERT against every other method, then every other method against scratch, at each scale's largest budget."""
    items, not_beaten, adjusted = [], [], []
    for scale, budget in analysis.headline_groups():
        methods, where = analysis.runs.methods(scale, budget), f"{scale}/{budget}"
        tests: dict[str, Paired] = {}
        for other in [m for m in methods if m != XPERT] if XPERT in methods else []:
            result = tests[other] = analysis.compare(scale, budget, XPERT, other)
            items.append(verdict_sentence(XPERT, other, result, where))
            if result.direction != "lower":
                not_beaten.append(f"`{other}` ({where}: {_direction_word(result)})")
        adjusted += multiplicity_sentences(tests, where)
        if BASELINE in methods:
            items += [
                verdict_sentence(m, BASELINE, analysis.compare(scale, budget, m, BASELINE), where)
                for m in methods
                if m not in (XPERT, BASELINE)
            ]
    if not items:
        items = ["No comparison possible: no scale has usable runs of scratch and another method."]
    note = (
        "Final validation loss at each scale's largest budget, paired by seed; "
        "better/worse means the 95% paired t interval of the difference excludes 0 (equivalently, the paired "
        "t-test's p < 0.05)."
    )
    blocks: list[Block] = [Heading(2, "Verdict"), Paragraph(note), Bullets(items)]
    if not_beaten:
        blocks.append(Paragraph("**Where XPERT does not beat a baseline:** " + "; ".join(not_beaten) + "."))
    return blocks + adjusted


def multiplicity_sentences(tests: dict[str, Paired], where: str) -> list[Block]:
    """XPERT's tested comparisons on one scale with Benjamini-Hochberg adjusted p-values: with several baselines,
    some p < 0.05 are expected by chance alone (7 true-null tests give at least one in about 30% of runs)."""
    tested = {other: r for other, r in tests.items() if r.tested}
    if len(tested) < 2:
        return []
    adjusted = dict(zip(tested, bh_adjusted([r.p_value for r in tested.values()]), strict=True))
    kept = [f"`{o}`" for o, p in adjusted.items() if p < 0.05 and tested[o].direction in ("lower", "higher")]
    lost = [f"`{o}`" for o, p in adjusted.items() if p >= 0.05 and tested[o].direction in ("lower", "higher")]
    values = ", ".join(f"`{o}` {fmt_p(p)}" for o, p in adjusted.items())
    text = (
        f"**{where}, adjusted for the {len(tested)} tests of XPERT** (Benjamini-Hochberg, "
        f"`scipy.stats.false_discovery_control`): adjusted p {values}. "
        f"Verdicts that hold after adjustment: {', '.join(kept) or 'none'}."
    )
    if lost:
        text += f" Not after adjustment (could be chance among {len(tested)} tests): {', '.join(lost)}."
    return [Paragraph(text)]


def _direction_word(result: Paired) -> str:
    words = {"higher": "worse", "unclear": "not distinguishable", "constant": "constant differences"}
    return words.get(result.direction, result.direction)
