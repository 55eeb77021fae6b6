"""`write_report` on a hand-made runs directory: the tables' numbers against numpy/scipy and hand computation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from report_fixture import (
    CURVES,
    PIQA,
    ROUGE,
    STUDENT_FLOPS_PER_TOKEN,
    TEACHER_FLOPS_PER_TOKEN,
    build_runs_dir,
    domain_loss,
)
from scipy import stats

from xpert_pl.report import write_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    # One report for the module: every test reads it, none writes to it.
    root = tmp_path_factory.mktemp("report")
    path = write_report(str(build_runs_dir(root / "runs")), str(root / "out"))
    summary = json.loads((path.parent / "report.json").read_text())
    groups = {(g["scale"], g["budget"]): g for g in summary["groups"]}
    return path.read_text(), (path.parent / "report.html").read_text(), groups, path.parent


def finals(budget: str, method: str) -> np.ndarray:
    return np.array([curve[-1] for curve in CURVES[budget][method].values()])


def table_row(markdown: str, section: str, first_cells: str) -> list[str]:
    """The cells of the first row starting with `first_cells` after the heading line containing `section`."""
    text = markdown[markdown.index(section) :]
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cells} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_mean_and_std_over_seeds_match_numpy(report):
    markdown, _, groups, _ = report
    for method in ("scratch", "xpert", "shuffled_xpert", "distillation"):
        values = finals("long", method)
        entry = groups[("2l", "long")]["methods"][method]["final"]["val/loss"]
        assert entry["n"] == len(values)
        assert entry["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert entry["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        row = table_row(markdown, "Final validation loss (mean", method)
        assert row[1] == str(len(values))
        assert row[2] == f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
    law = [domain_loss("law", v, s) for s, v in enumerate(finals("long", "xpert"))]
    assert (
        table_row(markdown, "Final validation loss (mean", "xpert")[4]
        == f"{np.mean(law):.4f} ± {np.std(law, ddof=1):.4f}"
    )


def test_paired_comparison_with_scratch_matches_scipy(report):
    markdown, _, groups, _ = report
    xpert, scratch = finals("long", "xpert"), finals("long", "scratch")
    result = groups[("2l", "long")]["methods"]["xpert"]["vs_scratch"]["val/loss"]
    assert result["seeds"] == [0, 1, 2]
    assert result["mean_diff"] == pytest.approx(np.mean(xpert - scratch), abs=1e-12)
    assert result["p_value"] == pytest.approx(stats.ttest_rel(xpert, scratch).pvalue, rel=1e-9)
    row = table_row(markdown, "Paired comparison with scratch", "xpert | val loss (all)")
    assert row[3] == f"{np.mean(xpert - scratch):+.4f}"
    assert row[5] == f"{stats.ttest_rel(xpert, scratch).pvalue:.3g}"


def test_t_interval_is_the_paired_t_tests_and_the_per_seed_values_are_kept(report):
    _, _, groups, _ = report
    diffs = finals("long", "xpert") - finals("long", "scratch")
    result = groups[("2l", "long")]["methods"]["xpert"]["vs_scratch"]["val/loss"]
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)  # the textbook recipe, by hand
    assert result["ci"] == pytest.approx([diffs.mean() - half, diffs.mean() + half], abs=1e-12)
    assert result["a"] == pytest.approx(list(finals("long", "xpert")), abs=1e-12)
    assert result["b"] == pytest.approx(list(finals("long", "scratch")), abs=1e-12)
    shuffled = groups[("2l", "long")]["methods"]["shuffled_xpert"]["xpert_vs"]["val/loss"]  # XPERT - control
    assert shuffled["mean_diff"] == pytest.approx(np.mean(finals("long", "xpert") - finals("long", "shuffled_xpert")))
    law = groups[("2l", "long")]["methods"]["shuffled_xpert"]["xpert_vs"]["val/loss/law"]  # per domain too
    assert law["a"] == pytest.approx(list(finals("long", "xpert") - 0.1 + 0.01 * np.arange(3)), abs=1e-12)


def test_rouge_and_lm_eval_tables_use_the_latest_results(report):
    markdown, _, groups, _ = report
    methods = groups[("2l", "long")]["methods"]
    for method in ("scratch", "xpert"):
        rouge = np.array(list(ROUGE[method].values()))
        assert methods[method]["final"]["rougeL/dollyeval"]["mean"] == pytest.approx(rouge.mean())
        piqa = np.array(list(PIQA[method].values()))
        assert methods[method]["final"]["lm_eval/piqa/acc"]["mean"] == pytest.approx(piqa.mean())
    row = table_row(markdown, "Rouge-L after SFT", "dollyeval")
    assert row[1] == f"{np.mean([20.0, 22.0, 21.0]):.4f} ± {np.std([20.0, 22.0, 21.0], ddof=1):.4f}"
    assert "99.0" not in row  # the stale step-10 summary


def test_convergence_fraction_equals_hand_computation(report):
    markdown, _, groups, _ = report
    # xpert seed 0 reaches scratch seed 0's final 3.00 between step 100 (3.10) and 150 (2.95) of 200.
    seed0 = (100 + (3.10 - 3.00) / (3.10 - 2.95) * 50) / 200
    seed1 = (100 + (3.20 - 3.10) / (3.20 - 3.00) * 50) / 200
    seed2 = (100 + (3.15 - 3.05) / (3.15 - 2.99) * 50) / 200
    fractions = groups[("2l", "long")]["methods"]["xpert"]["steps_fraction"]
    assert [fractions[s] for s in ("0", "1", "2")] == pytest.approx([seed0, seed1, seed2], abs=1e-12)
    assert groups[("2l", "long")]["methods"]["scratch"]["steps_fraction"] == {"0": 1.0, "1": 1.0, "2": 1.0}
    row = table_row(markdown, "## Convergence", "2l | long | xpert")
    expected = [seed0, seed1, seed2]
    assert row[3:] == [f"{np.mean(expected):.3f} ± {np.std(expected, ddof=1):.3f}", "3/3"]


def test_effective_token_multiplier_equals_hand_interpolation(report):
    markdown, _, groups, _ = report
    scratch_short, scratch_long = finals("short", "scratch").mean(), finals("long", "scratch").mean()
    xpert_short = finals("short", "xpert").mean()
    # Scratch: 3.55 at 1000 tokens, 3.05 at 2000; XPERT's short-budget loss sits between, interpolated in log(T).
    tokens = 1000 * 2 ** ((xpert_short - scratch_short) / (scratch_long - scratch_short))
    entry = groups[("2l", "short")]["methods"]["xpert"]
    assert entry["scratch_tokens_worth"] == {"tokens": pytest.approx(tokens, rel=1e-12), "relation": "="}
    assert entry["token_multiplier"] == pytest.approx(tokens / 1000, rel=1e-12)
    assert table_row(markdown, "## Effective-token", "2l | short | xpert")[-1] == f"{tokens / 1000:.2f}x"
    assert table_row(markdown, "## Effective-token", "2l | short | scratch")[-1] == "1.00x"
    # At the long budget XPERT beats scratch's best: only a lower bound.
    assert table_row(markdown, "## Effective-token", "2l | long | xpert")[-1] == "> 1.00x"


def test_incomplete_and_missing_cells_are_listed_and_excluded(report):
    markdown, _, groups, _ = report
    assert groups[("2l", "long")]["methods"]["xpert"]["seeds"] == [0, 1, 2]  # seed 3 is still running
    assert groups[("2l", "short")]["methods"]["scratch"]["seeds"] == [0, 1, 2]  # seed 3 failed
    missing = markdown[markdown.index("### Missing or incomplete cells") : markdown.index("## Results")]
    assert "| 2l | long | xpert | 3 | running | not finished: still training, or interrupted (`xpert bench" in missing
    assert "| 2l | short | scratch | 3 | failed |" in missing
    for method, seed in (("scratch", 3), ("shuffled_xpert", 3), ("distillation", 2), ("distillation", 3)):
        assert f"| 2l | long | {method} | {seed} | missing | no cell directory |" in missing
    assert "7 cell(s) are excluded" in missing


def test_verdict_says_worse_where_xpert_loses(report):
    markdown, _, _, _ = report
    verdict = markdown[markdown.index("## Verdict") : markdown.index("## Runs")]
    lines = {}
    for method in ("scratch", "shuffled_xpert", "distillation"):
        lines[method] = next(line for line in verdict.splitlines() if f" `{method}`: " in line)
    assert "XPERT is **better** than `scratch`" in lines["scratch"]
    assert "XPERT is **worse** than `shuffled_xpert`" in lines["shuffled_xpert"]
    assert "XPERT does not beat `shuffled_xpert` here." in lines["shuffled_xpert"]
    diff = finals("long", "xpert") - finals("long", "shuffled_xpert")
    assert f"mean difference {diff.mean():+.4f}" in lines["shuffled_xpert"]
    assert "`shuffled_xpert` is **better** than `scratch`" in verdict


def test_knowledge_section_concludes_from_the_numbers(report):
    markdown, _, _, _ = report
    section = markdown[markdown.index("## Knowledge or statistics?") : markdown.index("## Convergence")]
    diff = finals("long", "xpert") - finals("long", "shuffled_xpert")
    assert f"XPERT's final loss is higher than `shuffled_xpert`'s by {diff.mean():.4f}" in section
    assert f"p = {stats.ttest_rel(finals('long', 'xpert'), finals('long', 'shuffled_xpert')).pvalue:.3g}" in section
    assert "the control does better" in section
    row = table_row(section, "control", "shuffled_xpert")
    # Steps fractions: XPERT (hand values above) minus the control's (0.5, 0.4722, 0.4722).
    control = [0.5, (50 + 0.4 / 0.45 * 50) / 200, (50 + 0.4 / 0.45 * 50) / 200]
    xpert = [(100 + 0.1 / 0.15 * 50) / 200, 125 / 200, (100 + 0.1 / 0.16 * 50) / 200]
    assert row[6] == f"{np.mean(np.subtract(xpert, control)):+.3f}"
    low, high = stats.ttest_rel(finals("long", "xpert"), finals("long", "shuffled_xpert")).confidence_interval(0.95)
    assert f"(95% t interval {low:.4f} to {high:.4f}, p = " in section


def test_compute_table_counts_the_teachers_flops(report):
    markdown, _, _, _ = report
    row = table_row(markdown, "## Compute", "2l | long | distillation")
    student, teacher = STUDENT_FLOPS_PER_TOKEN * 2000, TEACHER_FLOPS_PER_TOKEN * 2000
    assert row[3:] == ["2", "2.000e+03", "155.0", f"{student:.3e}", f"{teacher:.3e}", f"{student + teacher:.3e}"]


def test_a_cell_copied_from_the_sweep_is_charged_its_sweep_runs_time(runs_dir, tmp_path):
    # Scratch's seed-0 long cell was copied from the sweep's run at 1e-3: its own record holds only its SFT
    # (20 s); the 300 s its pre-training took are the sweep run's, recorded in shared/wall_s.json.
    cell = runs_dir / "cells" / "2l" / "long" / "scratch" / "seed0" / "cell.json"
    record = json.loads(cell.read_text())
    record |= {"reused_from": "shared/lr_sweep/scratch/lr0.001", "learning_rate": 1e-3, "wall_s": 20.0}
    cell.write_text(json.dumps(record | {"stage_wall_s": {"pretrain": 0.0, "sft": 20.0}}))
    (runs_dir / "shared" / "wall_s.json").write_text(json.dumps({"lr sweep: scratch at 0.001": 300.0}))
    markdown = write_report(str(runs_dir), str(tmp_path / "out")).read_text()
    assert table_row(markdown, "## Compute", "2l | long | scratch")[5] == f"{(320 + 160 + 170) / 3:.1f}"
    # The bench's total counts those 300 s once, as the sweep's part.
    cells = sum(json.loads(path.read_text())["wall_s"] for path in runs_dir.glob("cells/*/*/*/*/cell.json"))
    wall = markdown[markdown.index("## Wall time") :]
    assert table_row(wall, "| part |", "lr sweep: scratch at 0.001")[1] == "5.0"
    total = table_row(wall, "| part |", "total (sum of the parts; with --jobs N > 1 cells overlap)")
    assert total[1] == f"{(300 + cells) / 60:.1f}"


def test_html_is_self_contained_with_embedded_figures(report):
    markdown, page, _, out = report
    assert 'src="http' not in page and "href=" not in page and "<script" not in page
    images = re.findall(r'<img alt="[^"]*" src="([^"]+)"', page)
    assert len(images) == 5  # final-loss bars, two loss-curve figures, consistency, selection_vs_n
    assert all(src.startswith("data:image/png;base64,") for src in images)
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert link.startswith("figures/") and (out / link).is_file()
    assert "# the fixture's matrix" in markdown and "# the fixture&#x27;s matrix" in page  # matrix.yaml verbatim
    assert "| gate |" in markdown and "0.3266" in markdown  # Tucker ranks and errors
    assert "save_dir: <runs_dir>/cells/2l/" in markdown and "save_dir: /" not in markdown


def test_configs_name_the_runs_folder_not_this_machines_path(tmp_path):
    from xpert_pl.report.appendix import runs_relative

    root = tmp_path / "bench"
    text = f"save_dir: {root}/cells/a\nteacher: '{root}'\nother: {root}-2/x\n"
    assert runs_relative(text, root) == f"save_dir: <runs_dir>/cells/a\nteacher: '<runs_dir>'\nother: {root}-2/x\n"


def test_layer_heatmaps_are_optional(runs_dir, tmp_path):
    path = write_report(str(runs_dir), str(tmp_path / "out"), layer_heatmaps=True)
    assert (path.parent / "figures" / "activation_layer_00.png").is_file()
    assert "activation_layer_00.png" in path.read_text()
