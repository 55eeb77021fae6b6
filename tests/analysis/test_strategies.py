"""Selection strategies: known experts, weights and scores on hand-made counts, validation, YAML and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from xpert_pl.analysis.selection import (
    LAYER_KEYS,
    SELECTION_KEYS,
    ConsistentExpertSelector,
    ExpertSelector,
    Selection,
)
from xpert_pl.analysis.strategies import (
    DomainSpecialistSelector,
    LeastFrequentSelector,
    RandomExpertSelector,
    TopFrequencySelector,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STRATEGY_YAMLS = sorted((CONFIGS / "analyze" / "strategies").glob("*.yaml"))

# One layer, two domains of 10 tokens, top-1, four experts; f = counts / 10.
# f_d0 = [.4, .3, .2, .1], f_d1 = [.1, .3, .4, .2]; mean f = [.25, .3, .3, .15]; E * mean f = [1.0, 1.2, 1.2, 0.6].
KNOWN = [[[4, 3, 2, 1], [1, 3, 4, 2]]]


def all_selectors(n: int | None = None) -> list[ExpertSelector]:
    return [
        ConsistentExpertSelector(n=n),
        TopFrequencySelector(n=n),
        LeastFrequentSelector(n=n),
        RandomExpertSelector(n=n, seed=3),
        DomainSpecialistSelector("b", n=n),
    ]


def test_top_frequency_known_numbers(make_counts):
    selection = TopFrequencySelector(n=3).select(make_counts(KNOWN, [10, 10]))
    layer = selection.layers[0]
    assert layer.scores == pytest.approx([1.0, 1.2, 1.2, 0.6])
    assert layer.experts == [1, 2, 0]  # 1 and 2 tie at 1.2: lower id first
    assert layer.weights == pytest.approx([0.3 / 0.85, 0.3 / 0.85, 0.25 / 0.85])
    assert selection.strategy == "top_frequency" and "mean_d" in selection.score
    uniform = TopFrequencySelector(n=2, weighting="uniform").select(make_counts(KNOWN, [10, 10]))
    assert uniform.layers[0].weights == [0.5, 0.5]


def test_least_frequent_picks_the_rarest(make_counts):
    layer = LeastFrequentSelector(n=2).select(make_counts(KNOWN, [10, 10])).layers[0]
    assert layer.experts == [3, 0]
    assert layer.scores == pytest.approx([1.0, 1.2, 1.2, 0.6])
    assert layer.weights == pytest.approx([0.15 / 0.4, 0.25 / 0.4])
    # Two never-used experts tie at 0: the lower id first, and frequency weights fall back to uniform, noted.
    never = LeastFrequentSelector(n=2).select(make_counts([[[5, 5, 0, 0], [6, 4, 0, 0]]], [10, 10])).layers[0]
    assert never.experts == [2, 3]
    assert never.weights == [0.5, 0.5]
    assert "zero routing frequency" in never.extra["weights_note"]


def test_domain_specialist_picks_the_domains_top_experts(make_counts):
    counts = make_counts(KNOWN, [10, 10])
    d0 = DomainSpecialistSelector("d0", n=2).select(counts)
    assert d0.layers[0].experts == [0, 1]
    assert d0.layers[0].scores == pytest.approx([1.6, 1.2, 0.8, 0.4])
    assert d0.layers[0].weights == pytest.approx([4 / 7, 3 / 7])
    assert d0.layers[0].extra == {"domain": "d0"}
    assert d0.strategy == "domain_specialist" and "'d0'" in d0.score
    d1 = DomainSpecialistSelector("d1", n=2).select(counts)
    assert d1.layers[0].experts == [2, 1]
    # Ties in the domain go to the higher mean frequency: f_d0 of e0, e1 = .3, .3; mean f = .2, .25.
    tie = DomainSpecialistSelector("d0", n=1).select(make_counts([[[3, 3, 2, 2], [1, 2, 5, 2]]], [10, 10]))
    assert tie.layers[0].experts == [1]


def test_domain_specialist_rejects_an_unknown_domain(make_counts):
    with pytest.raises(ValueError, match=r"unknown domain 'web'.*\['d0', 'd1'\]"):
        DomainSpecialistSelector("web").select(make_counts(KNOWN, [10, 10]))
    with pytest.raises(ValueError, match="domain"):
        DomainSpecialistSelector("")
    # Only the specialist's own domain needs tokens.
    assert DomainSpecialistSelector("d0", n=1).select(make_counts([[[4, 3, 2, 1], [0, 0, 0, 0]]], [10, 0]))
    with pytest.raises(ValueError, match="no tokens"):
        DomainSpecialistSelector("d1", n=1).select(make_counts([[[4, 3, 2, 1], [0, 0, 0, 0]]], [10, 0]))


def test_random_is_seeded_per_layer_and_reproducible(random_counts):
    counts = random_counts(layers=3, experts=64)
    first = RandomExpertSelector(n=4, seed=7).select(counts)
    assert first == RandomExpertSelector(n=4, seed=7).select(counts)
    assert [x.experts for x in first.layers] != [
        x.experts for x in RandomExpertSelector(n=4, seed=8).select(counts).layers
    ]
    for layer in first.layers:
        draw = torch.rand(64, generator=torch.Generator().manual_seed(7 + layer.layer), dtype=torch.float64)
        assert layer.scores == draw.tolist()
        assert layer.experts == torch.argsort(draw, descending=True)[:4].tolist()
        assert layer.weights == [0.25] * 4
    assert first.layers[0].experts != first.layers[1].experts  # layers draw independently
    assert first.strategy == "random" and "seed=7" in first.score


def test_random_frequency_weighting(make_counts):
    counts = make_counts(KNOWN, [10, 10])
    layer = RandomExpertSelector(n=2, seed=0, weighting="frequency").select(counts).layers[0]
    mean = [0.25, 0.3, 0.3, 0.15]
    total = sum(mean[e] for e in layer.experts)
    assert layer.weights == pytest.approx([mean[e] / total for e in layer.experts])
    empty = make_counts([[[4, 3, 2, 1], [0, 0, 0, 0]]], [10, 0])
    assert RandomExpertSelector(n=2).select(empty).layers[0].weights == [0.5, 0.5]  # uniform needs no counts
    with pytest.raises(ValueError, match="no tokens"):
        RandomExpertSelector(n=2, weighting="frequency").select(empty)


@pytest.mark.parametrize("n", [None, 1, 5, 64])
def test_every_strategy_gives_valid_ids_and_weights(random_counts, n):
    counts = random_counts(layers=3, experts=64)
    for selector in all_selectors(n):
        selection = selector.select(counts)
        expected_n = counts.top_k if n is None else n
        assert selection.n == expected_n and selection.num_experts == 64
        for layer in selection.layers:
            assert len(layer.experts) == len(set(layer.experts)) == expected_n
            assert all(0 <= e < 64 for e in layer.experts)  # routed ids only: shared experts are never counted
            assert sum(layer.weights) == pytest.approx(1.0) and all(w >= 0 for w in layer.weights)
            assert len(layer.scores) == 64


@pytest.mark.parametrize("cls", [TopFrequencySelector, LeastFrequentSelector, RandomExpertSelector])
def test_common_validation(cls, make_counts):
    with pytest.raises(ValueError, match="n must be"):
        cls(n=0)
    with pytest.raises(ValueError, match="weighting"):
        cls(weighting="bogus")
    with pytest.raises(ValueError, match="num_experts=4"):
        cls(n=5).select(make_counts(KNOWN, [10, 10]))
    with pytest.raises(ValueError, match="n must be"):
        DomainSpecialistSelector("d0", n=-1)


def test_with_n_keeps_the_other_arguments():
    selector = RandomExpertSelector(n=2, seed=5, weighting="frequency")
    clone = selector.with_n(6)
    assert type(clone) is RandomExpertSelector
    assert clone.describe() == {"class": "RandomExpertSelector", "n": 6, "seed": 5, "weighting": "frequency"}
    assert selector.n == 2
    assert DomainSpecialistSelector("law", n=1).with_n(3).describe()["domain"] == "law"
    with pytest.raises(ValueError, match="n must be"):
        selector.with_n(0)


def test_json_round_trip_keeps_the_schema(random_counts, tmp_path):
    counts = random_counts(layers=2, experts=8)
    for selector in all_selectors(3):
        selection = selector.select(counts)
        path = tmp_path / f"{selection.strategy}.json"
        selection.save(path)
        data = json.loads(path.read_text())
        assert list(data) == list(SELECTION_KEYS)
        assert all(list(x)[: len(LAYER_KEYS)] == list(LAYER_KEYS) for x in data["layers"])
        assert Selection.load(path) == selection
    specialist = json.loads((tmp_path / "domain_specialist.json").read_text())
    assert all(x["domain"] == "b" for x in specialist["layers"])


CLASS_PATHS = [
    ("xpert_pl.analysis.ConsistentExpertSelector", {"n": 2}),
    ("xpert_pl.analysis.strategies.TopFrequencySelector", {"n": 2, "weighting": "uniform"}),
    ("xpert_pl.analysis.strategies.LeastFrequentSelector", {"n": 3}),
    ("xpert_pl.analysis.strategies.RandomExpertSelector", {"n": 2, "seed": 11}),
    ("xpert_pl.analysis.strategies.DomainSpecialistSelector", {"domain": "law", "n": 1}),
]


@pytest.mark.parametrize(("class_path", "init_args"), CLASS_PATHS, ids=lambda x: str(x).rsplit(".", 1)[-1])
def test_every_strategy_builds_from_a_class_path(class_path, init_args):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(ExpertSelector, "selector")
    cfg = parser.parse_object({"selector": {"class_path": class_path, "init_args": init_args}})
    selector = parser.instantiate(cfg).selector
    assert type(selector).__name__ == class_path.rsplit(".", 1)[1]
    assert {k: selector.describe()[k] for k in init_args} == init_args


def test_strategy_yamls_build_on_the_tiny_analyze_config(tiny_data_root, tiny_tokenizer_dir, tmp_path):
    from xpert_pl.pipeline import steps as commands

    assert {p.stem for p in STRATEGY_YAMLS} == {
        "consistent",
        "top_frequency",
        "least_frequent",
        "random",
        "domain_specialist",
    }
    for path in STRATEGY_YAMLS:
        assert path.read_text().splitlines()[0] == (
            f"# xpert analyze --config configs/analyze/tiny.yaml --config configs/analyze/strategies/{path.name}"
        )
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--config", action=ActionConfigFile)  # as `xpert analyze` (auto_cli) has
        parser.add_function_arguments(commands.analyze)
        cfg = parser.parse_args(["--config", str(CONFIGS / "analyze" / "tiny.yaml"), "--config", str(path)])
        data = cfg.data.init_args
        data.tokenizer, data.data_root, data.cache_dir = str(tiny_tokenizer_dir), str(tiny_data_root), str(tmp_path)
        selector = parser.instantiate(cfg).selector
        class_name = _yaml_selector(path)["class_path"].rsplit(".", 1)[1]
        assert type(selector).__name__ == class_name
        assert selector.describe() == {"class": class_name, **_yaml_selector(path)["init_args"]}


def _yaml_selector(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())["selector"]
