"""The report's opening section: the source MoE every verdict is read against (architecture, tokens seen, final
validation loss overall and per domain)."""

from __future__ import annotations

from pathlib import Path

from xpert_pl.experiments.matrix import BASELINE
from xpert_pl.layout import HF_DIR, METRICS_FILE, RunLayout, hf_config, last_validation
from xpert_pl.paths import shown_path
from xpert_pl.pipeline.training import run_config, tokens_per_step
from xpert_pl.report.comparison import VAL_LOSS, RunComparison
from xpert_pl.report.plots import plot_source_beside_students
from xpert_pl.report.render import Block, Bullets, Figure, Heading, Paragraph, Table
from xpert_pl.report.runs import XPERT, curve, read_json_or_none, read_metrics_csv
from xpert_pl.report.sections import slug

SOURCE_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "num_experts_per_tok",
)


def source_section(layout: RunLayout) -> list[Block]:
    """Architecture, tokens seen and final validation losses of the source MoE (what its export and run hold)."""
    config = read_json_or_none(hf_config(layout.source_hf))
    if not config and layout.source_hf_given is not None:
        given = shown_path(layout.source_hf)
        problem = "not a directory readable from here (a Hub id, or moved): its architecture and losses are not shown"
        return [Heading(2, "Source MoE"), Paragraph(f"The source was given as `{given}`, {problem}.")]
    if not config:
        return []
    items = [f"`{k}`: {config[k]}" for k in SOURCE_FIELDS if config.get(k) is not None]
    run = source_run(layout)
    tokens = tokens_seen(run)
    if tokens is not None:
        items.append(f"tokens seen in training: {tokens:,} ({tokens / 1e6:.2f} M)")
    blocks: list[Block] = [Heading(2, "Source MoE"), Bullets(items), *_given_source_note(layout, run)]
    final = final_validation(run / METRICS_FILE)
    if final:
        unigram = (read_json_or_none(layout.unigram) or {}).get("loss", {})
        rows = []
        for key, value in sorted(final.items(), key=lambda kv: (kv[0] != "val/loss", kv[0])):
            floor = unigram.get("all" if key == "val/loss" else key.removeprefix("val/loss/"))
            rows.append([_domain(key), f"{value:.4f}", "-" if floor is None else f"{floor:.4f}"])
        blocks += [
            Paragraph(
                "The source's own validation loss at its last step (nats/token), on the split the students are "
                "validated on, beside a unigram model of the train split (add-one smoothing) on the same tokens: "
                "a source near the unigram loss has little knowledge to transfer."
            ),
            Table(["domain", "source", "unigram"], rows, (False, True, True)),
        ]
    return blocks


def _given_source_note(layout: RunLayout, run: Path) -> list[Block]:
    """Where a source given to the matrix (`source.hf`) was trained, as far as this folder can tell."""
    if layout.source_hf_given is None:
        return []
    given = shown_path(layout.source_hf)
    if run == layout.source_run:
        return [Paragraph(f"The source was given (`{given}`): its training run is not here.")]
    return [Paragraph(f"The source was given (`{given}`): its training run is read from `{shown_path(run)}`.")]


def source_run(layout: RunLayout) -> Path:
    """The source's training run: this folder's, or for a given source that a kit run exported (`<run>/hf`, e.g.
    another bench's `shared/source/hf`), that run, so a folder reusing a source still reports what it was."""
    given = layout.source_hf_given
    if given is not None and given.name == HF_DIR and (given.parent / METRICS_FILE).is_file():
        return given.parent
    return layout.source_run


def source_beside_students(analysis: RunComparison, figures: Path) -> list[Block]:
    """The source's validation curve beside scratch's and XPERT's at each scale's largest budget, against tokens."""
    run = source_run(analysis.runs.layout)
    per_step = tokens_per_step(run_config(run)) if (run / HF_DIR).is_dir() else None
    steps, losses = curve(read_metrics_csv(run / METRICS_FILE), VAL_LOSS) if per_step else ([], [])
    blocks: list[Block] = []
    for scale, budget in analysis.headline_groups() if steps else []:
        students = {}
        for method in (BASELINE, XPERT):
            runs = [c for c in analysis.runs.select(scale, budget, method) if c.steps and c.tokens_budget]
            students[method] = [([s * c.tokens_budget / c.steps for s in c.val_curve[0]], c.val_curve[1]) for c in runs]
        source = ([s * per_step for s in steps], losses)
        path = figures / f"source_{slug(scale)}.png"
        path = plot_source_beside_students(source, students, path, f"source and {scale}")
        caption = f"Validation loss against tokens seen: the source MoE's run beside the {scale} students (budget "
        blocks.append(Figure(path, caption + f"{budget}), mean over seeds, band = min to max."))
    return blocks


def tokens_seen(run_dir: Path) -> int | None:
    """max_steps x batch x block (x devices) of a finished training run, from its saved config.yaml (None if
    unknown)."""
    if not (run_dir / HF_DIR).is_dir():
        return None
    config = run_config(run_dir)
    steps, per_step = config.get("trainer", {}).get("max_steps"), tokens_per_step(config)
    if not isinstance(steps, int) or steps <= 0 or not per_step:
        return None
    return steps * per_step


def final_validation(metrics: Path) -> dict[str, float]:
    """The last logged value of `val/loss` and of every `val/loss/<domain>`."""
    final = last_validation(metrics)
    return {k: v for k, v in final.items() if k == "val/loss" or k.startswith("val/loss/")}


def _domain(key: str) -> str:
    return "all domains" if key == "val/loss" else key.removeprefix("val/loss/")
