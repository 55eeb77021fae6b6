"""Readings of the matrix beyond the headline's final losses: the knowledge x scale 2 x 2 design, the paired
difference at every token budget, XPERT's experts against single domains' (the paper's Figure 5), and where loss
curves cross (a method that leads early and falls behind later)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from xpert_pl.experiments.matrix import BASELINE
from xpert_pl.layout import RunLayout, bank_manifest
from xpert_pl.report.comparison import VAL_LOSS, RunComparison
from xpert_pl.report.plots import seed_band
from xpert_pl.report.render import Block, Bullets, Heading, Paragraph, Table
from xpert_pl.report.runs import XPERT, read_json_or_none
from xpert_pl.report.sections import fmt_p, fmt_spread, paired_cells
from xpert_pl.report.stats import Paired, bh_adjusted

# (steps, mean, min, max) of a method's validation curves over seeds, as `seed_band` gives them.
Band = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

# (knowledge, scale) -> method: scratch has neither, norm-matched scratch the experts' scale only, XPERT at the
# student's own initial norms the knowledge only, XPERT both.
DESIGN = {
    (False, False): BASELINE,
    (False, True): "norm_matched_scratch",
    (True, False): "xpert_target_init",
    (True, True): XPERT,
}


def knowledge_scale_section(analysis: RunComparison) -> list[Block]:
    """The 2 x 2 table of final loss (mean ± std) and the knowledge effect at each scale, paired by seed."""
    blocks: list[Block] = []
    for scale, budget in analysis.headline_groups():
        if not set(DESIGN.values()) <= set(analysis.runs.methods(scale, budget)):
            continue
        cell = {key: fmt_spread(analysis.spread(scale, budget, m)) + f" ({m})" for key, m in DESIGN.items()}
        table = Table(
            ["", "student's own initial scale", "experts' scale"],
            [
                ["no knowledge", cell[False, False], cell[False, True]],
                ["knowledge", cell[True, False], cell[True, True]],
            ],
            (False, True, True),
        )
        rows = []
        for label, (a, b) in {
            "knowledge at the student's scale": ("xpert_target_init", BASELINE),
            "knowledge at the experts' scale": (XPERT, "norm_matched_scratch"),
            "scale without knowledge": ("norm_matched_scratch", BASELINE),
            "scale with knowledge": (XPERT, "xpert_target_init"),
        }.items():
            rows.append([label, f"{a} - {b}", *paired_cells(analysis.compare(scale, budget, a, b))])
        effects = Table(
            ["effect", "difference", "seeds", "mean diff", "95% t interval", "p"], rows, (False,) * 2 + (True,) * 4
        )
        blocks += [Heading(3, f"{scale}/{budget}"), table, effects]
    if not blocks:
        return []
    note = (
        "Final validation loss (nats/token, mean ± std over seeds). A knowledge effect that holds at both scales is "
        "what the source's experts add beyond their norms; one that vanishes at the student's own scale was the "
        "scale all along."
    )
    return [Heading(2, "Knowledge x scale"), Paragraph(note), *blocks]


def budget_sweep_section(analysis: RunComparison) -> list[Block]:
    """Every method minus scratch at every token budget of a scale with several (the headline tables give only the
    largest): whether a lead holds, grows or fades as the budget grows."""
    rows = []
    for scale in analysis.runs.scales():
        budgets = analysis.runs.budgets(scale)
        for budget in budgets if len(budgets) > 1 else []:
            tokens = analysis.runs.budget_tokens(scale, budget)
            base = fmt_spread(analysis.spread(scale, budget, BASELINE))
            for method in analysis.runs.methods(scale, budget):
                result = analysis.compare(scale, budget, method, BASELINE)
                if method == BASELINE or not result.n:
                    continue
                loss = fmt_spread(analysis.spread(scale, budget, method))
                row = [scale, budget, f"{tokens:.4g}" if tokens else "-", method, base, loss, *paired_cells(result)]
                rows.append(row)
    if not rows:
        return []
    header = [
        "scale",
        "budget",
        "tokens",
        "method",
        "scratch",
        "method's loss",
        "seeds",
        "mean diff (method - scratch)",
        "95% t interval",
        "paired t-test p",
    ]
    note = (
        "Final validation loss (all domains, mean ± std over seeds) at every budget, and the method minus scratch "
        "paired by seed; each budget is its own run with its own schedule."
    )
    heading = Heading(2, "Paired comparison with scratch at every budget")
    return [heading, Paragraph(note), Table(header, rows, (False, False, True, False) + (True,) * 6)]


def single_domain_section(analysis: RunComparison) -> list[Block]:
    """The paper's Figure 5: XPERT's experts (consistently active across domains) against each single domain's
    specialists (the methods whose bank was selected by `domain_specialist`), on all domains and on that domain."""
    layout = analysis.runs.layout
    xpert_experts = _bank_experts(read_json_or_none(bank_manifest(layout.bank)))
    blocks: list[Block] = []
    for scale, budget in analysis.headline_groups():
        rows, own_tests = [], []
        for method in analysis.runs.methods(scale, budget):
            manifest = read_json_or_none(bank_manifest(layout.control_bank(method)))
            domain, overall = _specialist_domain(manifest), analysis.compare(scale, budget, XPERT, method)
            if domain is None or not overall.n:
                continue
            experts, own = _bank_experts(manifest), f"{VAL_LOSS}/{domain}"
            own_tests.append(analysis.compare(scale, budget, XPERT, method, own))
            numbers = [
                fmt_spread(analysis.spread(scale, budget, method)),
                _difference(overall),
                fmt_spread(analysis.spread(scale, budget, method, own)),
                _difference(own_tests[-1]),
            ]
            rows.append([method, domain, " ".join(map(str, experts)), _shared(experts, xpert_experts), *numbers])
        for row, adjusted in zip(rows, _adjusted(own_tests), strict=True):
            row.append(adjusted)
        if rows:
            blocks += [Heading(3, f"{scale}/{budget}"), Table(SINGLE_DOMAIN_HEADER, rows, (False,) * 4 + (True,) * 5)]
    if not blocks:
        return []
    note = (
        f"XPERT's experts per layer: {' '.join(map(str, xpert_experts))}. Final validation loss (nats/token, "
        "mean ± std over seeds) of each single-domain choice, on all domains and on its own domain's split, and XPERT "
        "minus it paired by seed (95% t interval, p unadjusted): a positive difference means the domain's own "
        "experts end lower. The own-domain column asks whether a domain's specialists serve that domain better; its "
        "p-values are also given adjusted over the table's domains (Benjamini-Hochberg), the all-domains ones are "
        "adjusted with XPERT's other tests in the verdict."
    )
    return [Heading(2, "Experts from one domain (the paper's Figure 5)"), Paragraph(note), *blocks]


def _adjusted(tests: list[Paired]) -> list[str]:
    """Benjamini-Hochberg adjusted p of each test, over those a t-test was made for ('-' for the others)."""
    finite = [i for i, t in enumerate(tests) if t.tested]
    adjusted = dict(zip(finite, bh_adjusted([tests[i].p_value for i in finite]), strict=True)) if finite else {}
    return [fmt_p(adjusted[i]) if i in adjusted else "-" for i in range(len(tests))]


SINGLE_DOMAIN_HEADER = [
    "method",
    "domain",
    "its experts per layer",
    "shared with XPERT's",
    "loss (all domains)",
    "XPERT - method (all)",
    "loss on its domain",
    "XPERT - method (its domain)",
    "adjusted p (its domain)",
]


def _specialist_domain(manifest: dict[str, Any] | None) -> str | None:
    """The domain a bank's experts were chosen from, when a single domain's specialists were (else None)."""
    selection = (manifest or {}).get("selection") or {}
    if selection.get("strategy") != "domain_specialist" or not selection.get("layers"):
        return None
    return selection["layers"][0].get("domain")


def _bank_experts(manifest: dict[str, Any] | None) -> list[list[int]]:
    """The source experts stacked in each layer of a bank (its manifest)."""
    return [list(layer.get("experts", [])) for layer in (manifest or {}).get("layers", [])]


def _shared(experts: list[list[int]], reference: list[list[int]]) -> str:
    """'k of n': how many of `reference`'s experts the same bank layer of `experts` also holds."""
    if len(experts) != len(reference):
        return "-"
    common = sum(len(set(a) & set(b)) for a, b in zip(experts, reference, strict=True))
    return f"{common} of {sum(len(b) for b in reference)}"


def _difference(result: Paired) -> str:
    """'+0.0032 [-0.0139, +0.0203], p = 0.633 (5 seeds)'."""
    seeds, diff, interval, p = paired_cells(result)
    if result.n < 2:
        return "-" if result.n == 0 else f"{diff} (1 seed: no interval)"
    return f"{diff} {interval}, p = {p} ({seeds} seeds)"


def crossing_steps(steps: np.ndarray, difference: np.ndarray) -> list[float]:
    """Steps where `difference` (method - scratch, mean over seeds) changes sign, linearly interpolated."""
    crossings = []
    for i in range(len(steps) - 1):
        a, b = difference[i], difference[i + 1]
        if a * b < 0:
            crossings.append(float(steps[i] + (steps[i + 1] - steps[i]) * a / (a - b)))
    return crossings


def crossings_section(analysis: RunComparison) -> list[Block]:
    """Where mean validation curves cross: every method's against scratch's, and XPERT's against every other
    method's (one leading early and falling behind later)."""
    groups = analysis.groups()
    if not groups:
        return []
    sentences = []
    for scale, budget in groups:
        methods = analysis.runs.methods(scale, budget)
        bands = {m: seed_band([c.val_curve for c in analysis.runs.select(scale, budget, m)]) for m in methods}
        pairs = [(m, BASELINE) for m in methods if BASELINE in bands and m != BASELINE]
        pairs += [(XPERT, m) for m in methods if XPERT in bands and m not in (XPERT, BASELINE)]
        for method, reference in pairs:
            sentence = crossing_sentence(f"{scale}/{budget}", method, reference, bands[method], bands[reference])
            sentences += [sentence] if sentence else []
    note = "Mean validation curves over seeds; a crossing is where the difference of two methods changes sign."
    found = Bullets(sentences) if sentences else Paragraph("No two compared curves cross: every early lead holds.")
    return [Heading(2, "Where curves cross"), Paragraph(note), found]


def crossing_sentence(where: str, method: str, reference: str, curve: Band, base: Band) -> str | None:
    """'`method` leads `reference` at first, crosses at step S and ends behind (...)', or None without a crossing."""
    if base[0].size < 2 or curve[0].size < 2:
        return None
    grid = np.intersect1d(base[0], curve[0])
    if grid.size < 2:
        return None
    difference = np.interp(grid, curve[0], curve[1]) - np.interp(grid, base[0], base[1])
    steps = crossing_steps(grid, difference)
    if not steps:
        return None
    name, other = ("XPERT" if m == XPERT else f"`{m}`" for m in (method, reference))
    first, last = ("leads" if difference[0] < 0 else "trails"), ("ahead" if difference[-1] < 0 else "behind")
    return (
        f"{where}: {name} {first} {other} at first, its mean curve crosses {other}'s at step "
        f"{', '.join(f'{s:.0f}' for s in steps)} and ends {last} ({difference[-1]:+.4f} nats/token at step "
        f"{grid[-1]:.0f})."
    )


def lr_sweep_section(layout: RunLayout) -> list[Block]:
    """The learning-rate sweep: final loss per rate and method, the rate every cell used, each method's best."""
    record = json.loads(layout.lr_sweep.read_text()) if layout.lr_sweep.is_file() else None
    if not record:
        return []
    methods, rates = list(record["loss"]), [f"{r:g}" for r in record["rates"]]
    rows = [
        [rate, *["-" if record["loss"][m].get(rate) is None else f"{record['loss'][m][rate]:.4f}" for m in methods]]
        for rate in rates
    ]
    best = "; ".join(f"`{m}`'s best: {b:g}" for m, b in record["best"].items() if b is not None)
    text = (
        f"Every cell trained at learning rate {record['chosen']:g}, the rate with scratch's lowest final validation "
        f"loss in this sweep (seed {record['seed']}, the headline scale, the largest budget). {best}. A method "
        "whose best rate differs from the chosen one is compared at a rate that is not its own best."
    )
    return [
        Heading(2, "Learning rate"),
        Paragraph(text),
        Table(["learning rate", *methods], rows, (True,) * (1 + len(methods))),
    ]
