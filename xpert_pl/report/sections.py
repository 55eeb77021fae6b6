"""The report's result sections as document blocks: runs, final metrics, paired comparisons, controls,
convergence, effective tokens, compute and loss curves."""

from __future__ import annotations

import math
import re
from pathlib import Path

from xpert_pl.experiments.matrix import BASELINE
from xpert_pl.layout import sweep_wall_key
from xpert_pl.report.comparison import VAL_LOSS, RunComparison
from xpert_pl.report.plots import plot_final_bars, plot_loss_bands
from xpert_pl.report.render import Block, Bullets, Figure, Heading, Paragraph, Table
from xpert_pl.report.runs import XPERT, CellRun, RunsDir, read_json_or_none
from xpert_pl.report.stats import Paired, Spread, spread

# Controls of "Knowledge or statistics?" and what a lower XPERT loss against each one shows.
CONTROLS = {
    "shuffled_xpert": "the learned function, not only the weight statistics, helps",
    "spectrum_matched": "the learned function, not only the weights' singular-value spectrum, helps",
    "norm_matched_scratch": "the learned function, not only the weights' scale, helps",
    "untrained_source": "what the source MoE learned helps, not only its architecture and initialisation",
    "random_experts": "choosing the consistently active experts helps, beyond transferring any experts",
}


# ---- formatting --------------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_spread(result: Spread, digits: int = 4) -> str:
    """'mean ± std'; one seed has no spread."""
    if result.n == 0:
        return "-"
    return f"{result.mean:.{digits}f}" if result.n < 2 else f"{result.mean:.{digits}f} ± {result.std:.{digits}f}"


def fmt_p(value: float | None) -> str:
    if value is None:
        return "-"
    return "n/a (constant differences)" if math.isnan(value) else f"{value:.3g}"


def fmt_ci(result: Paired, digits: int = 4) -> str:
    if result.ci_low is None or result.ci_high is None:
        recorded_only = result.p_value is not None and math.isfinite(result.p_value)  # see t_interval_from_p
        return "not recoverable" if recorded_only else "-"
    return f"[{result.ci_low:+.{digits}f}, {result.ci_high:+.{digits}f}]"


def paired_cells(result: Paired, digits: int = 4) -> list[str]:
    """[seeds, mean difference, 95% t interval, p] of a paired comparison."""
    diff = "-" if result.n == 0 else f"{result.mean_diff:+.{digits}f}"
    return [str(result.n), diff, fmt_ci(result, digits), fmt_p(result.p_value)]


def fmt_reading(result: Paired) -> str:
    readings = {
        "lower": "lower (interval excludes 0)",
        "higher": "higher (interval excludes 0)",
        "unclear": "interval includes 0",
        "constant": "constant differences: no test",
    }
    return readings.get(result.direction, f"too few seeds ({result.n})")


def metric_label(key: str) -> str:
    if key == VAL_LOSS:
        return "val loss (all)"
    return key.replace("val/loss/", "val loss: ")


def slug(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", p) for p in parts)


def fmt_interval(result: Paired, sign: float = 1.0, plus: str = "+") -> str:
    """'95% t interval L to H' of `sign * (a - b)` ('not recoverable' when a recorded summary had none)."""
    if result.ci_low is None or result.ci_high is None:
        return "95% t interval not recoverable"
    low, high = sorted((sign * result.ci_low, sign * result.ci_high))
    return f"95% t interval {low:{plus}.4f} to {high:{plus}.4f}"


def fmt_details(result: Paired) -> str:
    return f"p = {fmt_p(result.p_value)}, {result.n} seeds"


# ---- runs --------------------------------------------------------------------------------------------------------


def runs_section(runs: RunsDir) -> list[Block]:
    """Seeds per cell group, and every cell left out of the numbers (not done, failed, unreadable, never started)."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for cell in runs.cells:
        groups.setdefault((cell.scale, cell.budget, cell.method), [])
        if cell.usable:
            groups[(cell.scale, cell.budget, cell.method)].append(cell.seed)
    ordered = sorted(groups.items(), key=lambda item: runs.order(*item[0]))
    rows = [[s, b, m, str(len(seeds)), ", ".join(map(str, sorted(seeds)))] for (s, b, m), seeds in ordered]
    blocks: list[Block] = [
        Heading(2, "Runs"),
        Table(["scale", "budget", "method", "seeds used", "seed ids"], rows, (False, False, False, True)),
    ]
    left_out = [[c.scale, c.budget, c.method, str(c.seed), c.status, c.problem or ""] for c in runs.incomplete()]
    absent = sorted(runs.absent, key=lambda a: (runs.order(a.scale, a.budget, a.method), a.seed))
    left_out += [[a.scale, a.budget, a.method, str(a.seed), "missing", "no cell directory"] for a in absent]
    if left_out:
        blocks += [
            Heading(3, "Missing or incomplete cells"),
            Paragraph(f"{len(left_out)} cell(s) are excluded from every number below (never averaged in)."),
            Table(["scale", "budget", "method", "seed", "status", "problem"], left_out),
        ]
    return blocks + _missing_history_note(runs)


def _missing_history_note(runs: RunsDir) -> list[Block]:
    cells = [c for c in runs.cells if c.usable and c.history_from is not None]
    if not cells:
        return []
    names = ", ".join(f"{c.scale}/{c.budget}/{c.method}/seed{c.seed} (from step {c.history_from:.0f})" for c in cells)
    text = (
        f"**Early metrics missing:** the metrics.csv of {names} starts late: the run was resumed by a kit version "
        "whose logger deleted the rows before the resume. Their final values count; their steps to scratch's final "
        "loss are left out, and their curves start at that step."
    )
    return [Paragraph(text)]


# ---- final metrics and paired comparisons ------------------------------------------------------------------------


def final_loss_section(analysis: RunComparison, scale: str, budget: str, figures: Path) -> list[Block]:
    """Mean ± std over seeds of the final validation loss, overall and per domain, and a bar chart."""
    methods, keys = analysis.runs.methods(scale, budget), analysis.metric_keys(scale, budget, "val/loss")
    keys = sorted(keys, key=lambda k: (k != VAL_LOSS, k))
    rows = [
        [m, str(analysis.spread(scale, budget, m).n), *[fmt_spread(analysis.spread(scale, budget, m, k)) for k in keys]]
        for m in methods
    ]
    header = ["method", "seeds", *map(metric_label, keys)]
    values = {m: list(analysis.values(scale, budget, m).values()) for m in methods}
    path = plot_final_bars(values, figures / f"final_loss_{slug(scale, budget)}.png", f"{scale}, {budget}")
    return [
        Heading(3, "Final validation loss (mean ± std over seeds, nats/token)"),
        Table(header, rows, (False, *[True] * (len(header) - 1))),
        Figure(path, f"Final validation loss at {scale}/{budget}: bars are means, dots are seeds."),
    ]


def paired_section(analysis: RunComparison, scale: str, budget: str) -> list[Block]:
    """Every method minus scratch on every final metric, paired by seed."""
    keys = sorted(analysis.metric_keys(scale, budget, ""), key=lambda k: (not k.startswith("val/"), k != VAL_LOSS, k))
    rows = []
    for method in analysis.runs.methods(scale, budget):
        if method == BASELINE:
            continue
        for key in keys:
            result = analysis.compare(scale, budget, method, BASELINE, key)
            if result.n:
                rows.append([method, metric_label(key), *paired_cells(result), fmt_reading(result)])
    if not rows:
        return []
    header = ["method", "metric", "seeds", "mean diff (method - scratch)", "95% t interval", "paired t-test p"]
    header.append("reading")
    note = "Lower is better for losses; higher is better for Rouge-L and lm-eval accuracies."
    return [
        Heading(3, "Paired comparison with scratch (same seeds)"),
        Paragraph(note),
        Table(header, rows, (False, False, True, True, True, True, False)),
    ]


def eval_section(analysis: RunComparison, scale: str, budget: str, prefix: str, title: str) -> list[Block]:
    """Mean ± std over seeds of every metric under `prefix` (Rouge-L sets, lm-eval task metrics); for lm-eval
    accuracies, which methods score within 2 standard errors of chance (no signal at this scale)."""
    keys = analysis.metric_keys(scale, budget, prefix)
    if not keys:
        return []
    # Only the methods that were evaluated (a matrix may fine-tune and evaluate a subset of them).
    methods = analysis.runs.methods(scale, budget)
    methods = [m for m in methods if any(analysis.values(scale, budget, m, k) for k in keys)]
    rows = [
        [k.removeprefix(prefix), *[fmt_spread(analysis.spread(scale, budget, m, k)) for m in methods]] for k in keys
    ]
    header, numeric = ["metric", *methods], (False, *[True] * len(methods))
    if "lm_eval/" in prefix:
        for row, key in zip(rows, keys, strict=True):
            row.append(no_signal(analysis, scale, budget, methods, key, prefix))
        flag = "no signal at this scale (within 2 SE of chance or of a constant answer)"
        header, numeric = [*header, flag], (*numeric, False)
    return [Heading(3, title), Table(header, rows, numeric)]


def chance_level(task_metric: str) -> float | None:
    """Chance accuracy of an lm-eval `<task>/<metric>` (1 / answer options), None when not an accuracy."""
    from xpert_pl.evaluation.lm_tasks import LM_TASKS  # loads torch: only when a report has lm-eval numbers

    task, _, metric = task_metric.partition("/")
    spec = LM_TASKS.get(task)
    if spec is None or spec.choices is None or metric not in ("acc", "acc_norm"):
        return None
    return 1.0 / spec.choices


def no_signal(analysis: RunComparison, scale: str, budget: str, methods: list[str], key: str, prefix: str) -> str:
    """The methods whose mean score is within 2 mean standard errors (lm-eval's, over seeds) of chance or of a
    constant answer (always picking option k scores the share of gold answers that are k), each with the reason."""
    chance = chance_level(key.removeprefix(prefix))
    if chance is None:
        return ""
    flagged = []
    for method in methods:
        runs = [c for c in analysis.runs.select(scale, budget, method) if key in c.final and key in c.stderr]
        if runs:
            score = sum(c.final[key] for c in runs) / len(runs)
            stderr = sum(c.stderr[key] for c in runs) / len(runs)
            reason = no_signal_reason(score, stderr, chance, runs, key)
            if reason:
                flagged.append(f"{method} ({reason})")
    return "; ".join(flagged) if flagged else "-"


# A model that picks one option for at least this share of the documents is said to give a constant answer.
CONSTANT_PICK_SHARE = 0.9


def no_signal_reason(score: float, stderr: float, chance: float, runs: list[CellRun], key: str) -> str | None:
    """Why a mean `score` of `<...>/<task>/<metric>` carries no signal ("chance", or the constant answer it
    matches with the share of the model's most frequent pick), None when it does."""
    if abs(score - chance) <= 2 * stderr:
        return "chance"
    task, metric = key.rsplit("/", 1)
    answers = [c.answers[task] for c in runs if task in c.answers and metric in c.answers[task]]
    if not answers:
        return None
    labels = [sum(a["labels"][k] for a in answers) / len(answers) for k in range(len(answers[0]["labels"]))]
    picks = [sum(a[metric][k] for a in answers) / len(answers) for k in range(len(labels))]
    top = max(range(len(picks)), key=picks.__getitem__)
    for option, share in enumerate(labels):
        if abs(score - share) <= 2 * stderr:
            if option == top and picks[top] >= CONSTANT_PICK_SHARE:
                return f"constant answer: picks option {top} in {picks[top]:.0%}; always {top} scores {share:.3f}"
            return f"no better than always answering option {option} ({share:.3f}); picks {top} in {picks[top]:.0%}"
    return None


# ---- knowledge or statistics -------------------------------------------------------------------------------------


def control_sentence(control: str, loss: Paired, steps: Paired) -> str:
    """The conclusion about one control that follows from the paired final-loss difference (XPERT - control)."""
    if loss.direction == "too few seeds":
        return f"`{control}`: too few seeds ({loss.n}) for a test."
    if loss.direction == "constant":
        return f"`{control}`: every seed differs by {loss.mean_diff:+.4f} ({loss.n} seeds): no spread, no test."
    claim = CONTROLS.get(control, "the transferred knowledge helps")
    if loss.direction == "lower":  # the interval of (control - XPERT), positive: the size of XPERT's advantage
        numbers = f"({fmt_interval(loss, -1.0, '')}, {fmt_details(loss)})"
        text = f"XPERT's final loss is lower than `{control}`'s by {-loss.mean_diff:.4f} {numbers}: {claim}."
    elif loss.direction == "higher":
        numbers = f"({fmt_interval(loss, 1.0, '')}, {fmt_details(loss)})"
        text = (
            f"XPERT's final loss is higher than `{control}`'s by {loss.mean_diff:.4f} {numbers}: the control does "
            f"better, so this run gives no evidence that {claim}."
        )
    else:
        text = (
            f"XPERT's final loss differs from `{control}`'s by {loss.mean_diff:+.4f}, but the difference is not "
            f"significant ({fmt_interval(loss)}, {fmt_details(loss)}); the interval includes 0: this run cannot "
            "tell knowledge from statistics."
        )
    if steps.direction in ("lower", "higher"):
        word = "sooner" if steps.direction == "lower" else "later"
        text += (
            f" XPERT reaches scratch's final loss {word} ({steps.mean_diff:+.3f} of scratch's steps, "
            f"{fmt_details(steps)})."
        )
    return text


def knowledge_section(analysis: RunComparison) -> list[Block]:
    """XPERT against each statistics-preserving control: final loss and steps-to-scratch-final, paired."""
    blocks: list[Block] = []
    for scale, budget in analysis.headline_groups():
        methods = analysis.runs.methods(scale, budget)
        controls = [c for c in CONTROLS if c in methods]
        if XPERT not in methods or not controls:
            continue
        rows, sentences = [], []
        for control in controls:
            loss = analysis.compare(scale, budget, XPERT, control)
            steps = analysis.compare_fractions(scale, budget, XPERT, control)
            rows.append([control, *paired_cells(loss), *paired_cells(steps, 3)])
            sentences.append(control_sentence(control, loss, steps))
        header = ["control", "seeds", "Δ final loss (XPERT - control)", "95% t interval", "p"]
        header += ["seeds (both reached)", "Δ steps fraction", "95% t interval", "p"]
        blocks += [Heading(3, f"{scale}/{budget}"), Table(header, rows, (False, *[True] * 8)), Bullets(sentences)]
    if not blocks:
        return []
    note = (
        "Each control keeps some statistics of XPERT's weights but not what the source learned. Differences are "
        "XPERT minus the control (negative: XPERT better); the steps fraction is the share of scratch's steps "
        "needed to reach scratch's final loss, compared over the seeds where both reached it."
    )
    return [Heading(2, "Knowledge or statistics?"), Paragraph(note), *blocks]


# ---- convergence, effective tokens, compute, curves --------------------------------------------------------------


def convergence_section(analysis: RunComparison) -> list[Block]:
    """Per group: the fraction of scratch's steps each method needs to reach scratch's final validation loss."""
    rows = []
    for scale, budget in analysis.groups():
        for method in analysis.runs.methods(scale, budget):
            fractions = analysis.fractions(scale, budget, method)
            reached = [f for f in fractions.values() if f is not None]
            if not fractions:
                continue
            value = fmt_spread(spread(reached), 3) if reached else "not reached"
            rows.append([scale, budget, method, value, f"{len(reached)}/{len(fractions)}"])
    if not rows:
        return []
    note = (
        "Per seed: the first step (linear interpolation between validations) at which the run reaches the final "
        "validation loss of scratch's run with the same seed, divided by that scratch run's last validation step; "
        "mean ± std over the seeds that reached it (a value below 1 means faster than scratch)."
    )
    header = ["scale", "budget", "method", "fraction of scratch's steps", "seeds reached"]
    return [Heading(2, "Convergence"), Paragraph(note), Table(header, rows, (False, False, False, True, True))]


def effective_tokens_section(analysis: RunComparison) -> list[Block]:
    """The scratch token budget each method's mean final loss is worth, and the multiplier over its own budget."""
    rows = []
    for scale in analysis.runs.scales():
        for budget in analysis.runs.budgets(scale):
            for method in analysis.runs.methods(scale, budget):
                tokens, worth = analysis.budget_tokens(scale, budget, method), analysis.worth(scale, budget, method)
                loss = analysis.spread(scale, budget, method)
                worth_text = "-" if worth is None else f"{worth.relation} {worth.tokens:.4g}".replace("= ", "")
                multiplier = "-" if worth is None or not tokens else worth.multiplier(tokens)
                rows.append(
                    [scale, budget, method, f"{tokens:.4g}" if tokens else "-", fmt(loss.mean), worth_text, multiplier]
                )
    if not rows:
        return []
    note = (
        "Scratch's mean final validation loss is interpolated piecewise-linearly against log(tokens) across the "
        "budgets of the same scale; a method's mean final loss at budget B is worth T scratch tokens, and the "
        "multiplier is T / B. Outside scratch's range only a bound is known (> or <)."
    )
    header = ["scale", "budget", "method", "tokens (B)", "mean final loss", "worth scratch tokens (T)", "T / B"]
    return [Heading(2, "Effective-token multiplier"), Paragraph(note), Table(header, rows, (False,) * 3 + (True,) * 4)]


def compute_section(analysis: RunComparison) -> list[Block]:
    """Tokens, wall time and FLOPs (student, teacher for distillation, total), means over seeds."""
    sweep_seconds = read_json_or_none(analysis.runs.layout.wall_times) or {}
    rows = [
        [scale, budget, method, *_compute_cells(analysis.runs.select(scale, budget, method), sweep_seconds)]
        for scale, budget in analysis.groups()
        for method in analysis.runs.methods(scale, budget)
    ]
    if not rows:
        return []
    header = ["scale", "budget", "method", "seeds", "tokens seen", "wall time (s)"]
    header += ["student FLOPs", "teacher FLOPs", "total FLOPs"]
    note = (
        "Means over seeds of the training counters at the last step (FLOPs: the model's training FLOPs per token "
        "times tokens; the teacher's forward passes for distillation); wall time covers every stage of a cell "
        "(pre-training, and SFT/evaluation when run); a cell copied from the learning-rate sweep is charged that run's "
        "recorded pre-training time. * = extrapolated from the last logged step."
    )
    return [Heading(2, "Compute"), Paragraph(note), Table(header, rows, (False,) * 3 + (True,) * 6)]


def wall_time_section(analysis: RunComparison) -> list[Block]:
    """The bench's wall time: every shared stage and learning-rate sweep run as recorded, and the cells' sum."""
    stages = read_json_or_none(analysis.runs.layout.wall_times) or {}
    cells = [c.wall_s for c in analysis.runs.cells if c.wall_s is not None]
    if not stages and not cells:
        return []
    rows = [[name, fmt(seconds / 60, 1)] for name, seconds in stages.items()]
    rows.append([f"{len(cells)} cells (pre-training, and SFT with evaluation where run)", fmt(sum(cells) / 60, 1)])
    rows.append(
        ["total (sum of the parts; with --jobs N > 1 cells overlap)", fmt((sum(stages.values()) + sum(cells)) / 60, 1)]
    )
    note = (
        "Minutes each part of the bench took on this machine, summed over reruns (a stage killed and resumed adds "
        "up its parts; a shared stage killed before it finished is not recorded). Cells copied from the "
        "learning-rate sweep's identical run count 0."
    )
    return [Heading(2, "Wall time"), Paragraph(note), Table(["part", "minutes"], rows, (False, True))]


def _compute_cells(cells: list[CellRun], sweep_seconds: dict[str, float]) -> list[str]:
    tokens, wall = _mean([c.tokens for c in cells]), _mean([_cell_cost_s(c, sweep_seconds) for c in cells])
    student, teacher = _mean([c.student_flops for c in cells]), _mean([c.teacher_flops for c in cells])
    total = None if student is None else student + (teacher or 0.0)
    mark = "*" if any(c.extrapolated for c in cells) else ""
    counters = [_sci(v) + mark if v is not None else "-" for v in (tokens, student, teacher, total)]
    return [str(len(cells)), counters[0], fmt(wall, 1), *counters[1:]]


def _cell_cost_s(cell: CellRun, sweep_seconds: dict[str, float]) -> float | None:
    """What the cell cost to produce: a copied cell's pre-training was paid by its sweep run (None if unknown)."""
    if cell.wall_s is None or cell.reused_from is None:
        return cell.wall_s
    if cell.learning_rate is None:
        return None
    pretrain = sweep_seconds.get(sweep_wall_key(cell.method, cell.learning_rate))
    return None if pretrain is None else cell.wall_s + pretrain


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.3e}"


def curves_section(analysis: RunComparison, figures: Path) -> list[Block]:
    """Validation loss against step per group: mean over seeds with a min-max band."""
    blocks: list[Block] = [Heading(2, "Loss curves")]
    for scale, budget in analysis.groups():
        curves = {
            m: [c.val_curve for c in analysis.runs.select(scale, budget, m)]
            for m in analysis.runs.methods(scale, budget)
        }
        path = plot_loss_bands(curves, figures / f"val_loss_{slug(scale, budget)}.png", f"{scale}, {budget}")
        blocks.append(Figure(path, f"Validation loss at {scale}/{budget}: mean over seeds, band = min to max."))
    return blocks if len(blocks) > 1 else []
