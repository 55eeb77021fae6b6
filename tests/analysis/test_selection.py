"""Expert selection: the consistency score on known numbers, tie-breaks, weights, JSON schema, forced routing."""

from __future__ import annotations

import json

import pytest
import torch

from xpert_pl.analysis import ActivationCounts, ConsistentExpertSelector, Selection, count_activations


def _counts(counts: list[list[list[int]]], tokens: list[int], top_k: int = 1) -> ActivationCounts:
    c = torch.tensor(counts, dtype=torch.int64)
    return ActivationCounts(
        domains=[f"d{i}" for i in range(len(tokens))],
        counts=c,
        prob_sum=c.double(),
        tokens=torch.tensor(tokens, dtype=torch.int64),
        top_k=top_k,
        num_experts=c.shape[-1],
    )


def test_score_formula_ranking_and_weights():
    # One layer, two domains of 10 tokens, top-1, four experts. f = counts / 10.
    # d0: [0.4, 0.3, 0.2, 0.1], d1: [0.1, 0.3, 0.4, 0.2] -> s = 4 * min = [0.4, 1.2, 0.8, 0.4]
    counts = _counts([[[4, 3, 2, 1], [1, 3, 4, 2]]], [10, 10])
    selection = ConsistentExpertSelector(n=2).select(counts)
    layer = selection.layers[0]
    assert layer.scores == pytest.approx([0.4, 1.2, 0.8, 0.4])
    assert layer.experts == [1, 2]
    # mean f: e1 = 0.3, e2 = 0.3 -> equal weights
    assert layer.weights == pytest.approx([0.5, 0.5])
    assert sum(layer.weights) == pytest.approx(1.0)
    assert selection.n == 2 and selection.top_k == 1 and selection.num_experts == 4
    assert selection.domains == ["d0", "d1"]


def test_tie_breaks_on_mean_frequency_then_id():
    # Experts 0 and 3 tie on s = 0.4 (min f = 0.1); mean f: e0 = 0.25, e3 = 0.15 -> e0 wins.
    counts = _counts([[[4, 3, 2, 1], [1, 3, 4, 2]]], [10, 10])
    layer = ConsistentExpertSelector(n=3).select(counts).layers[0]
    assert layer.experts == [1, 2, 0]
    # Identical experts everywhere: the lower id wins.
    flat = ConsistentExpertSelector(n=2).select(_counts([[[5, 5, 5, 5], [5, 5, 5, 5]]], [20, 20]))
    assert flat.layers[0].experts == [0, 1]


def test_frequency_weighting_and_top_k_default():
    # top-2, 10 tokens per domain -> f = counts / 20. Layer 0: e0 strongly, e1 weakly used in both domains.
    counts = _counts([[[12, 6, 1, 1], [10, 8, 2, 0]]], [10, 10], top_k=2)
    selection = ConsistentExpertSelector().select(counts)
    assert selection.n == 2
    layer = selection.layers[0]
    assert layer.experts == [0, 1]
    mean = {0: (12 + 10) / 40, 1: (6 + 8) / 40}
    assert layer.weights == pytest.approx([mean[0] / (mean[0] + mean[1]), mean[1] / (mean[0] + mean[1])])
    uniform = ConsistentExpertSelector(weighting="uniform").select(counts).layers[0]
    assert uniform.weights == [0.5, 0.5]


def test_invalid_n_and_empty_domain_raise():
    counts = _counts([[[4, 3, 2, 1]]], [10])
    with pytest.raises(ValueError, match="n must be"):
        ConsistentExpertSelector(n=0)
    with pytest.raises(ValueError, match="num_experts=4"):
        ConsistentExpertSelector(n=5).select(counts)
    with pytest.raises(ValueError, match="weighting"):
        ConsistentExpertSelector(weighting="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no tokens"):
        ConsistentExpertSelector(n=1).select(_counts([[[4, 3, 2, 1], [0, 0, 0, 0]]], [10, 0]))


def test_json_round_trip_and_schema(tmp_path):
    counts = _counts([[[4, 3, 2, 1], [1, 3, 4, 2]], [[1, 1, 1, 7], [2, 2, 2, 4]]], [10, 10])
    selection = ConsistentExpertSelector(n=2).select(counts)
    path = tmp_path / "selection.json"
    selection.save(path)
    data = json.loads(path.read_text())
    assert list(data) == ["strategy", "n", "num_experts", "top_k", "domains", "score", "layers"]
    assert all(list(x) == ["layer", "experts", "weights", "scores"] for x in data["layers"])
    assert [x["layer"] for x in data["layers"]] == [0, 1]
    assert all(len(x["scores"]) == 4 for x in data["layers"])
    assert Selection.load(path) == selection
    del data["layers"][0]["weights"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="weights"):
        Selection.load(path)


def test_forced_routing_selects_known_experts(forced_moe, forced_experts, make_batches):
    batches = {"a": make_batches(2, 2, 10, seed=0), "b": make_batches(1, 3, 7, seed=5)}
    counts = count_activations(forced_moe, batches, progress=False)
    freq = counts.frequency()
    assert torch.all(freq[:, :, list(forced_experts)] == 0.5)
    selection = ConsistentExpertSelector(n=2).select(counts)
    assert len(selection.layers) == 4
    for layer in selection.layers:
        assert sorted(layer.experts) == list(forced_experts)
        assert layer.weights == pytest.approx([0.5, 0.5])
        assert layer.scores[forced_experts[0]] == pytest.approx(4.0)
