"""The report's parts on small hand-made inputs: statistics, sentences, readers and the HTML renderer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from xpert_pl.report.plots import seed_band
from xpert_pl.report.render import Paragraph, Table, to_html
from xpert_pl.report.runs import read_cell, read_lm_eval, read_metrics_csv
from xpert_pl.report.sections import control_sentence, fmt_ci, fmt_reading, fmt_spread
from xpert_pl.report.stats import Paired, crossing_step, paired, scratch_tokens_worth, spread, steps_fraction
from xpert_pl.report.verdict import multiplicity_sentences, verdict_sentence


def test_crossing_step_interpolates_between_validations():
    steps, values = [0, 10, 20, 30], [4.0, 3.0, 2.0, 1.5]
    assert crossing_step(steps, values, 2.5) == pytest.approx(15.0)  # halfway from 3.0 (step 10) to 2.0 (step 20)
    assert crossing_step(steps, values, 4.5) == 0.0  # already there at the first validation
    assert crossing_step(steps, values, 1.0) is None
    # Against a scratch run ending at 2.0 after 40 steps: 15 / 40 of its steps.
    assert steps_fraction((steps, values), ([0, 40], [5.0, 2.5])) == pytest.approx(15 / 40)
    assert steps_fraction((steps, [4.0, 3.9, 3.8, 3.7]), ([0, 40], [5.0, 2.5])) is None


def test_paired_matches_numpy_and_scipy():
    a, b = {0: 2.0, 1: 2.3, 2: 2.1, 3: 2.6}, {0: 2.2, 1: 2.4, 2: 2.4, 5: 9.9}  # seed 3 and 5 have no partner
    result = paired(a, b)
    x, y = np.array([2.0, 2.3, 2.1]), np.array([2.2, 2.4, 2.4])
    assert result.seeds == (0, 1, 2) and result.a == (2.0, 2.3, 2.1) and result.b == (2.2, 2.4, 2.4)
    assert result.mean_diff == pytest.approx(np.mean(x - y))
    assert result.p_value == pytest.approx(stats.ttest_rel(x, y).pvalue)
    half = stats.t.ppf(0.975, 2) * np.std(x - y, ddof=1) / np.sqrt(3)
    assert (result.ci_low, result.ci_high) == pytest.approx((np.mean(x - y) - half, np.mean(x - y) + half))


def test_one_seed_is_too_few_and_constant_differences_have_no_p_value():
    one = paired({0: 2.0}, {0: 2.5})
    assert one.direction == "too few seeds" and one.ci_low is None and one.p_value is None
    assert control_sentence("shuffled_xpert", one, one) == "`shuffled_xpert`: too few seeds (1) for a test."
    assert "too few seeds (1 paired; mean difference -0.5000)" in verdict_sentence("xpert", "scratch", one, "2l/long")
    constant = paired({0: 2.0, 1: 2.4}, {0: 2.1, 1: 2.5})
    assert math.isnan(constant.p_value) and constant.ci_low is None and constant.direction == "constant"
    assert verdict_sentence("xpert", "scratch", constant, "2l/long") == (
        "2l/long: XPERT vs `scratch`: every seed differs by -0.1000 (2 seeds): no spread, so no test and no "
        "verdict. XPERT is not shown to beat `scratch`."
    )
    assert fmt_reading(constant) == "constant differences: no test" and fmt_ci(constant) == "-"
    assert spread([3.0]).n == 1 and math.isnan(spread([3.0]).std) and fmt_spread(spread([3.0])) == "3.0000"


def test_sentences_when_the_ci_includes_zero():
    unclear = Paired((0, 1, 2), 0.01, -0.02, 0.04, 0.5)
    sentence = verdict_sentence("xpert", "random_experts", unclear, "2l/long")
    assert "XPERT is **not distinguishable** from `random_experts`" in sentence
    assert sentence.endswith("XPERT does not beat `random_experts` here.")
    text = control_sentence("spectrum_matched", unclear, Paired((), math.nan, None, None, None))
    assert "not significant (95% t interval -0.0200 to +0.0400, p = 0.5, 3 seeds)" in text
    assert text.endswith("this run cannot tell knowledge from statistics.")
    better = control_sentence("shuffled_xpert", Paired((0, 1, 2, 3, 4), -0.031, -0.050, -0.012, 0.004), unclear)
    assert better == (
        "XPERT's final loss is lower than `shuffled_xpert`'s by 0.0310 (95% t interval 0.0120 to 0.0500, p = 0.004, "
        "5 seeds): the learned function, not only the weight statistics, helps."
    )


def test_scratch_tokens_worth_interpolates_in_log_tokens_and_bounds_outside():
    scratch = [(4e9, 2.6), (1e9, 3.0)]
    worth = scratch_tokens_worth(scratch, 2.8)  # halfway in loss -> geometric mean of 1e9 and 4e9
    assert worth.relation == "=" and worth.tokens == pytest.approx(2e9)
    assert worth.multiplier(1e9) == "2.00x"
    assert scratch_tokens_worth(scratch, 2.5).multiplier(1e9) == "> 4.00x"
    assert scratch_tokens_worth(scratch, 3.2).multiplier(2e9) == "< 0.50x"
    assert scratch_tokens_worth([], 3.0) is None


def test_lm_eval_reader_accepts_the_kit_summary_and_raw_results(tmp_path):
    kit = {"tasks": {"boolq": {"metric": "acc", "score": 0.7, "metrics": {"acc": 0.7}, "stderr": {"acc": 0.01}}}}
    (tmp_path / "lm_eval").mkdir()
    (tmp_path / "lm_eval" / "lm_eval_step10.json").write_text(json.dumps({"step": 10, **kit}))  # the callback's file
    assert read_lm_eval(tmp_path, "lm_eval") == {"lm_eval/boolq/acc": 0.7}
    raw = {"results": {"piqa": {"alias": "piqa", "acc,none": 0.6, "acc_stderr,none": 0.01, "acc_norm,none": 0.65}}}
    (tmp_path / "lm_eval_step20.json").write_text(json.dumps(raw))  # the later step wins
    assert read_lm_eval(tmp_path, "sft/lm_eval") == {"sft/lm_eval/piqa/acc": 0.6, "sft/lm_eval/piqa/acc_norm": 0.65}


def test_metrics_reader_drops_empty_cells(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/loss\n0,0,,5.0\n0,9,4.2,\n")
    assert read_metrics_csv(path) == [
        {"epoch": 0.0, "step": 0.0, "val/loss": 5.0},
        {"epoch": 0.0, "step": 9.0, "train/loss": 4.2},
    ]


def test_html_escapes_text_and_renders_the_same_table():
    page = to_html(
        [Paragraph("a <script> and `code` and **bold**"), Table(["m", "x"], [["a|b", "1.0"]], (False, True))], "t"
    )
    assert "&lt;script&gt;" in page and "<code>code</code>" in page and "<strong>bold</strong>" in page
    assert "<td>a|b</td><td class=num>1.0</td>" in page


def test_compute_counters_are_scaled_to_the_last_step(tmp_path):
    # Lightning logged the counters last at step 99 (100 steps done) of a 120-step run: scale by 120 / 100.
    cell_dir = tmp_path / "cells" / "2l" / "long" / "xpert" / "seed0"
    cell_dir.mkdir(parents=True)
    (cell_dir / "cell.json").write_text(json.dumps({"status": "done", "steps": 120, "seed": 0}))
    header = "epoch,step,train/tokens,train/student_flops,train/teacher_flops,val/loss\n"
    (cell_dir / "metrics.csv").write_text(header + "0,49,800,4800,0,\n0,99,1600,9600,0,\n0,120,,,,3.5\n")
    cell = read_cell(cell_dir)
    assert cell.usable and cell.extrapolated
    assert (cell.tokens, cell.student_flops, cell.teacher_flops) == (1920.0, 11520.0, 0.0)
    assert (cell.method, cell.seed, cell.final) == ("xpert", 0, {"val/loss": 3.5})


def test_a_metrics_file_missing_its_early_rows_is_flagged(tmp_path):
    cell_dir = tmp_path / "cells" / "2l" / "long" / "xpert" / "seed1"
    cell_dir.mkdir(parents=True)
    (cell_dir / "cell.json").write_text(json.dumps({"status": "done", "steps": 490, "seed": 1}))
    header = "epoch,step,train/loss,val/loss\n"
    late = "0,399,4.3,\n0,419,,4.65\n0,489,,4.58\n"  # validations every 70 steps, first row at 399
    (cell_dir / "metrics.csv").write_text(header + late)
    cell = read_cell(cell_dir)
    assert cell.usable and cell.history_from == 399 and cell.final["val/loss"] == 4.58
    (cell_dir / "metrics.csv").write_text(header + "0,9,7.9,\n0,69,,5.9\n0,139,,5.2\n")
    assert read_cell(cell_dir).history_from is None


def test_seed_band_averages_seeds_on_shared_steps():
    steps, mean, low, high = seed_band([([0, 10, 20], [4.0, 3.0, 2.0]), ([0, 5, 20], [5.0, 4.0, 3.0])])
    # Seed 1 has no validation at step 10: interpolated between 4.0 (step 5) and 3.0 (step 20) -> 3.6667.
    assert steps.tolist() == [0, 5, 10, 20]
    assert mean == pytest.approx([4.5, (3.5 + 4.0) / 2, (3.0 + 11 / 3) / 2, 2.5])
    assert low.tolist() == pytest.approx([4.0, 3.5, 3.0, 2.0]) and high.tolist() == pytest.approx(
        [5.0, 4.0, 11 / 3, 3.0]
    )


def test_every_method_of_a_large_matrix_has_its_own_colour_and_line_style():
    from xpert_pl.report.plots import method_styles

    methods = ["scratch", "xpert", *[f"control_{i}" for i in range(26)]]
    styles = method_styles(methods)
    looks = [(colour, str(dash)) for colour, dash, _ in styles.values()]
    assert len(set(looks)) == len(methods) == 28
    assert styles["scratch"][:2] == ("black", "-") and styles["xpert"][:2] == ("#d62728", "-")
    assert method_styles(["xpert", "norm_matched_scratch"])["norm_matched_scratch"][0] != styles["xpert"][0]


def test_lm_eval_scores_within_two_standard_errors_of_chance_are_flagged(tmp_path):
    import json
    from types import SimpleNamespace

    from xpert_pl.report.runs import read_answers, read_lm_eval
    from xpert_pl.report.sections import chance_level, no_signal

    answers = {"labels": [0.38, 0.62], "acc": [0.01, 0.99], "acc_norm": [0.01, 0.99]}
    summary = {"tasks": {"boolq": {"metrics": {"acc": 0.53}, "stderr": {"acc": 0.02}, "answers": answers}}}
    (tmp_path / "lm_eval").mkdir()
    (tmp_path / "lm_eval" / "lm_eval_step30.json").write_text(json.dumps(summary))
    assert read_lm_eval(tmp_path, "sft/lm_eval", "stderr") == {"sft/lm_eval/boolq/acc": 0.02}
    assert read_answers(tmp_path, "sft/lm_eval") == {"sft/lm_eval/boolq": answers}
    assert chance_level("boolq/acc") == 0.5 and chance_level("hellaswag/acc_norm") == 0.25
    assert chance_level("boolq/f1") is None and chance_level("unknown/acc") is None
    key = "sft/lm_eval/boolq/acc"
    scores = {"scratch": (0.53, 0.02), "xpert": (0.60, 0.02), "distillation": (0.46, 0.02)}  # 1.5, 5 and 2 SE away
    runs = {m: [SimpleNamespace(final={key: v}, stderr={key: e}, answers={})] for m, (v, e) in scores.items()}
    analysis = SimpleNamespace(runs=SimpleNamespace(select=lambda scale, budget, m: runs[m]))
    flagged = "scratch (chance); distillation (chance)"
    assert no_signal(analysis, "2l", "long", list(scores), key, "sft/lm_eval/") == flagged
    assert no_signal(analysis, "2l", "long", ["xpert"], key, "sft/lm_eval/") == "-"
    # 0.60 is 5 SE above chance but 1 SE below always answering "yes" (62% of the gold answers), which the model
    # picks 99% of the time: a constant answer, not a skill; without the answer shares it stays unflagged.
    runs["xpert"][0].answers = {"sft/lm_eval/boolq": answers}
    reason = "xpert (constant answer: picks option 1 in 99%; always 1 scores 0.620)"
    assert no_signal(analysis, "2l", "long", ["xpert"], key, "sft/lm_eval/") == reason
    # Balanced picks at the majority share: no signal either, but not called a constant answer.
    balanced = {**answers, "acc": [0.48, 0.52]}
    runs["xpert"][0].answers = {"sft/lm_eval/boolq": balanced}
    reason = "xpert (no better than always answering option 1 (0.620); picks 1 in 52%)"
    assert no_signal(analysis, "2l", "long", ["xpert"], key, "sft/lm_eval/") == reason
    runs["xpert"][0].final[key] = 0.70  # 4 SE above the constant answer: a signal
    assert no_signal(analysis, "2l", "long", ["xpert"], key, "sft/lm_eval/") == "-"


def test_the_verdict_says_which_of_xperts_verdicts_hold_after_adjustment():
    def result(p: float, diff: float) -> Paired:
        return Paired((0, 1, 2), diff, diff - 0.01 if p < 0.05 else -0.01, diff + 0.01 if p < 0.05 else 0.01, p)

    tests = {"scratch": result(0.01, -0.3), "random_experts": result(0.03, 0.04), "shuffled_xpert": result(0.04, 0.02)}
    tests |= {"distillation": result(0.5, 0.001), "full_experts": Paired((0,), 0.02, None, None, None)}
    (paragraph,) = multiplicity_sentences(tests, "2l/long")
    assert "adjusted for the 4 tests of XPERT" in paragraph.text  # the one-seed comparison is not a test
    assert "`scratch` 0.04, `random_experts` 0.0533, `shuffled_xpert` 0.0533, `distillation` 0.5" in paragraph.text
    assert "Verdicts that hold after adjustment: `scratch`." in paragraph.text
    assert "could be chance among 4 tests): `random_experts`, `shuffled_xpert`." in paragraph.text
    assert multiplicity_sentences({"scratch": tests["scratch"]}, "2l/long") == []


def test_a_folder_reusing_another_runs_source_reports_that_source(tmp_path):
    import yaml

    from xpert_pl.layout import RunLayout
    from xpert_pl.report.render import Bullets
    from xpert_pl.report.runs import load_runs
    from xpert_pl.report.source import source_section

    trained = tmp_path / "reference" / "shared" / "source"  # another bench's source run, exported under hf/
    (trained / "hf").mkdir(parents=True)
    (trained / "hf" / "config.json").write_text(json.dumps({"model_type": "olmoe", "num_experts": 16}))
    config = {"trainer": {"max_steps": 40}, "data": {"init_args": {"batch_size": 4, "block_size": 8}}}
    (trained / "config.yaml").write_text(yaml.safe_dump(config))
    (trained / "metrics.csv").write_text("step,val/loss,val/loss/code\n39,3.25,3.5\n")
    bench = tmp_path / "budgets"
    (bench / "cells").mkdir(parents=True)
    (bench / "matrix.yaml").write_text(yaml.safe_dump({"source": {"hf": str(trained / "hf")}, "budgets": {"a": 1}}))
    blocks = source_section(load_runs(bench).layout)
    items = next(b for b in blocks if isinstance(b, Bullets)).items
    assert "`num_experts`: 16" in items and "tokens seen in training: 1,280 (0.00 M)" in items  # 40 x 4 x 8
    table = next(b for b in blocks if isinstance(b, Table))
    assert table.rows == [["all domains", "3.2500", "-"], ["code", "3.5000", "-"]]
    assert any(isinstance(b, Paragraph) and f"read from `{trained}`" in b.text for b in blocks)
    # A relative source.hf is taken from where the bench ran (the matrix's out_dir above the folder), not the cwd.
    spec = {"out_dir": "work/budgets", "source": {"hf": "../reference/shared/source/hf"}, "budgets": {"a": 1}}
    moved = tmp_path / "elsewhere" / "work" / "budgets"
    (moved / "cells").mkdir(parents=True)
    (moved / "matrix.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "elsewhere" / "reference").symlink_to(tmp_path / "reference")
    blocks = source_section(load_runs(moved).layout)
    assert next(b for b in blocks if isinstance(b, Table)).rows[0] == ["all domains", "3.2500", "-"]
    (moved / "matrix.yaml").write_text(yaml.safe_dump(spec | {"source": {"hf": "org/moe"}}))  # a Hub id
    assert [b.text for b in source_section(load_runs(moved).layout) if isinstance(b, Paragraph)] == [
        "The source was given as `org/moe`, not a directory readable from here (a Hub id, or moved): its "
        "architecture and losses are not shown."
    ]
    exported_only = tmp_path / "hf"  # a given source with no training run beside it: its loss is not known here
    exported_only.mkdir()
    (exported_only / "config.json").write_text(json.dumps({"model_type": "olmoe"}))
    blocks = source_section(RunLayout(bench, exported_only))
    assert not any(isinstance(b, Table) for b in blocks)
    assert any(isinstance(b, Paragraph) and "its training run is not here" in b.text for b in blocks)
