"""The knowledge x scale table, the budget sweep, the single-domain (Figure 5) table and the curve crossings, on known
numbers."""

from __future__ import annotations

import numpy as np
import pytest

from xpert_pl.report.design import (
    DESIGN,
    budget_sweep_section,
    crossing_sentence,
    crossing_steps,
    knowledge_scale_section,
    single_domain_section,
)
from xpert_pl.report.render import Table
from xpert_pl.report.stats import paired, spread

FINAL = {  # seed -> final loss; knowledge helps by 0.10 at both scales, the experts' scale by 0.02
    "scratch": {0: 3.00, 1: 3.10, 2: 3.05},
    "norm_matched_scratch": {0: 2.98, 1: 3.08, 2: 3.04},
    "xpert_target_init": {0: 2.90, 1: 3.01, 2: 2.94},
    "xpert": {0: 2.88, 1: 2.99, 2: 2.93},
}


class FakeComparison:
    """What the section reads of a `RunComparison`: one group, these methods' final losses."""

    class runs:
        @staticmethod
        def methods(scale, budget):
            return list(FINAL)

    def headline_groups(self):
        return [("2l", "long")]

    def spread(self, scale, budget, method):
        return spread(list(FINAL[method].values()))

    def compare(self, scale, budget, a, b):
        return paired(FINAL[a], FINAL[b])


def test_crossings_are_interpolated_where_the_difference_changes_sign():
    steps = np.array([0.0, 100.0, 200.0, 300.0])
    assert crossing_steps(steps, np.array([-0.2, -0.1, 0.1, 0.3])) == [150.0]  # leads early, behind from 150
    assert crossing_steps(steps, np.array([-0.2, -0.1, -0.05, -0.01])) == []
    assert crossing_steps(steps, np.array([0.1, -0.1, 0.1, -0.3])) == pytest.approx([50.0, 150.0, 225.0])


def test_a_crossing_sentence_says_who_leads_first_and_where_the_curves_cross():
    steps = np.array([69.0, 139.0, 209.0])
    xpert = (steps, np.array([5.0, 4.8, 4.6]), None, None)
    distillation = (steps, np.array([5.2, 4.85, 4.5]), None, None)
    sentence = crossing_sentence("2l/long", "xpert", "distillation", xpert, distillation)
    # Differences -0.2, -0.05, +0.1: the sign changes at 139 + 70 * 0.05 / 0.15 = 162.3.
    assert sentence == (
        "2l/long: XPERT leads `distillation` at first, its mean curve crosses `distillation`'s at step 162 and ends "
        "behind (+0.1000 nats/token at step 209)."
    )
    assert crossing_sentence("2l/long", "xpert", "scratch", xpert, (steps, np.array([5.1, 4.9, 4.7]))) is None


def test_the_two_by_two_table_and_the_knowledge_effects():
    blocks = knowledge_scale_section(FakeComparison())
    table, effects = (b for b in blocks if isinstance(b, Table))
    assert table.rows[0][1].endswith("(scratch)") and table.rows[1][2].endswith("(xpert)")
    assert table.rows[1][1].startswith("2.950") and "xpert_target_init" in table.rows[1][1]  # mean of 2.90/3.01/2.94
    by_effect = {row[0]: row for row in effects.rows}
    assert float(by_effect["knowledge at the student's scale"][3]) == pytest.approx(-0.1, abs=1e-4)
    assert float(by_effect["scale without knowledge"][3]) == pytest.approx(-0.0167, abs=1e-4)
    assert set(DESIGN.values()) == set(FINAL)


def test_no_table_without_all_four_cells():
    class Partial(FakeComparison):
        class runs:
            @staticmethod
            def methods(scale, budget):
                return ["scratch", "xpert", "norm_matched_scratch"]

    assert knowledge_scale_section(Partial()) == []


BY_BUDGET = {  # budget -> method -> seed -> final loss: XPERT's lead fades from 0.40 to 0.10
    "half": {"scratch": {0: 5.5, 1: 5.6, 2: 5.55}, "xpert": {0: 5.1, 1: 5.21, 2: 5.14}},
    "double": {"scratch": {0: 4.3, 1: 4.35, 2: 4.32}, "xpert": {0: 4.2, 1: 4.26, 2: 4.21}},
}


class BudgetComparison:
    """What the budget section reads of a `RunComparison`: scale 2l at two budgets, scale 4l at one."""

    class runs:
        @staticmethod
        def scales():
            return ["2l", "4l"]

        @staticmethod
        def budgets(scale):
            return list(BY_BUDGET) if scale == "2l" else ["half"]

        @staticmethod
        def budget_tokens(scale, budget):
            return {"half": 1.0e6, "double": 4.0e6}[budget]

        @staticmethod
        def methods(scale, budget):
            return ["scratch", "xpert"]

    def spread(self, scale, budget, method):
        return spread(list(BY_BUDGET[budget][method].values()))

    def compare(self, scale, budget, a, b):
        return paired(BY_BUDGET[budget][a], BY_BUDGET[budget][b])


def test_the_budget_table_pairs_each_method_with_scratch_at_every_budget_of_a_swept_scale():
    (table,) = (b for b in budget_sweep_section(BudgetComparison()) if isinstance(b, Table))
    assert [row[:4] for row in table.rows] == [["2l", "half", "1e+06", "xpert"], ["2l", "double", "4e+06", "xpert"]]
    assert [float(row[7]) for row in table.rows] == pytest.approx([-0.4, -0.1])  # 4l has one budget: no row
    assert table.rows[1][4].startswith("4.3233") and table.rows[1][5].startswith("4.2233")
    assert float(table.rows[0][9]) < 1e-3 and table.rows[0][6] == "3"


def test_the_learning_rate_section_names_the_chosen_rate_and_each_methods_best(tmp_path):
    import json

    from xpert_pl.layout import RunLayout
    from xpert_pl.report.design import lr_sweep_section
    from xpert_pl.report.render import Paragraph

    layout = RunLayout(tmp_path)
    assert lr_sweep_section(layout) == []
    layout.shared.mkdir()
    loss = {"scratch": {"0.001": 3.2, "0.003": 3.1}, "xpert": {"0.001": 3.0, "0.003": None}}
    record = {"rates": [0.001, 0.003], "seed": 0, "loss": loss, "best": {"scratch": 0.003, "xpert": 0.001}}
    layout.lr_sweep.write_text(json.dumps({**record, "chosen": 0.003}))
    blocks = lr_sweep_section(layout)
    text = next(b for b in blocks if isinstance(b, Paragraph)).text
    assert "learning rate 0.003" in text and "`xpert`'s best: 0.001" in text
    table = next(b for b in blocks if isinstance(b, Table))
    assert table.rows == [["0.001", "3.2000", "3.0000"], ["0.003", "3.1000", "-"]]


def _bank(path, experts, strategy, domain=None):
    import json

    path.mkdir(parents=True)
    layers = [{"layer": i, "experts": e, **({"domain": domain} if domain else {})} for i, e in enumerate(experts)]
    selection = {"strategy": strategy, "layers": layers}
    (path / "manifest.json").write_text(json.dumps({"selection": selection, "layers": layers}))


def test_the_single_domain_table_compares_xpert_with_each_domains_specialists(tmp_path):
    from scipy import stats

    from xpert_pl.layout import RunLayout

    own = {  # domain -> method -> seed -> loss on the domain's split; law's experts: -0.0833 below XPERT's
        "law": {"xpert": {0: 3.0, 1: 3.2, 2: 3.1}, "domain_law": {0: 2.9, 1: 3.1, 2: 3.05}},
        "news": {"xpert": {0: 4.0, 1: 4.1, 2: 4.3}, "domain_news": {0: 4.05, 1: 4.1, 2: 4.2}},
    }
    final = {**FINAL, "domain_law": {0: 2.95, 1: 3.02, 2: 2.96}, "random_experts": {0: 3.0, 1: 3.1, 2: 3.0}}
    final["domain_news"] = {0: 2.9, 1: 3.0, 2: 2.9}
    layout = RunLayout(tmp_path)
    _bank(layout.bank, [[0, 13], [5, 3]], "consistent")
    _bank(layout.control_bank("domain_law"), [[9, 13], [3, 5]], "domain_specialist", "law")
    _bank(layout.control_bank("domain_news"), [[1, 2], [3, 7]], "domain_specialist", "news")
    _bank(layout.control_bank("random_experts"), [[1, 2], [3, 4]], "random")

    def values(key):
        return own[key.split("/")[-1]] if key.count("/") == 2 else final

    class Comparison:
        class runs:
            @staticmethod
            def methods(scale, budget):
                return list(final)

        runs.layout = layout

        def headline_groups(self):
            return [("2l", "long")]

        def spread(self, scale, budget, method, key="val/loss"):
            return spread(list(values(key)[method].values()))

        def compare(self, scale, budget, a, b, key="val/loss"):
            return paired(values(key)[a], values(key)[b]) if b in values(key) else paired({}, {})

    (table,) = (b for b in single_domain_section(Comparison()) if isinstance(b, Table))
    law, news = table.rows  # random experts were not chosen from one domain: no row
    assert law[:4] == ["domain_law", "law", "[9, 13] [3, 5]", "3 of 4"] and news[3] == "1 of 4"
    assert law[4].startswith("2.9767 ± ") and law[5].startswith("-0.0433 [") and law[5].endswith("(3 seeds)")
    assert law[6].startswith("3.0167 ± ") and law[7].startswith("+0.0833 [")
    p = [stats.ttest_rel(list(own[d]["xpert"].values()), list(own[d][f"domain_{d}"].values())).pvalue for d in own]
    assert p[0] < p[1]  # Benjamini-Hochberg over 2 tests: the smaller p doubles unless the larger one is below that
    assert [float(law[8]), float(news[8])] == pytest.approx([min(2 * p[0], p[1]), p[1]], rel=1e-2)
    for method in ("domain_law", "domain_news"):
        (layout.control_bank(method) / "manifest.json").unlink()
    assert single_domain_section(Comparison()) == []  # no bank chosen from one domain: no section
