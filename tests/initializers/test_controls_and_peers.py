"""The ablation controls and peer initializers on the tiny OLMoE source, against independent computations."""

from __future__ import annotations

import json

import pytest
import torch

from xpert_pl.adaptation import uniform_indices
from xpert_pl.analysis import ActivationCounts, LeastFrequentSelector, RandomExpertSelector
from xpert_pl.bank import TuckerConsolidator
from xpert_pl.initializers import (
    FFNTransfer,
    FullExpertsInit,
    LinearExpansionInit,
    RandomExpertsInit,
    RareExpertsInit,
    SingleExpertInit,
    WeightSelectionInit,
    XpertInit,
)
from xpert_pl.initializers.peers import fit_linear_expansion
from xpert_pl.models import DenseStudent, load_causal_lm
from xpert_pl.provenance import source_fingerprint, source_record
from xpert_pl.sources.experts import expert_matrix, moe_layers

MATS = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
FAST = TuckerConsolidator(n_iter_max=3)  # a few HOOI sweeps: the selection, not the decomposition, is tested


@pytest.fixture(scope="module")
def live(tiny_source_dir):
    """The tiny source's experts, read from the live model: (layer, expert, matrix) -> tensor."""
    model = load_causal_lm(tiny_source_dir)
    layers = {moe.index: moe.experts for moe in moe_layers(model)}
    return lambda layer, e, m: expert_matrix(layers[layer], e, m)


@pytest.fixture(scope="module")
def vocab(tiny_source_dir) -> int:
    return json.loads((tiny_source_dir / "config.json").read_text())["vocab_size"]


def student(vocab: int, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return DenseStudent("llama-tiny", overrides=overrides).build(vocab)


def weights(model, j: int) -> dict[str, torch.Tensor]:
    return {m: getattr(model.model.layers[j].mlp, p).weight.detach() for m, p in MATS.items()}


def mean_frequency(analysis) -> torch.Tensor:
    return ActivationCounts.load(analysis).frequency().mean(1)  # (layers x experts)


def all_initializers(source, analysis) -> dict[str, object]:
    return {
        "random_experts": RandomExpertsInit(str(source), str(analysis), seed=3, consolidator=FAST),
        "rare_experts": RareExpertsInit(str(source), str(analysis), consolidator=FAST),
        "full_experts": FullExpertsInit(str(source), str(analysis / "selection.json")),
        "single_expert": SingleExpertInit(str(source), str(analysis)),
        "weight_selection": WeightSelectionInit(str(source)),
        "linear_expansion": LinearExpansionInit(str(source)),
    }


def test_each_sets_only_the_ffn_matrices_and_keeps_the_parameter_count(tiny_source_dir, tiny_analysis_dir, vocab):
    ffn = {f"model.layers.{j}.mlp.{p}.weight" for j in range(2) for p in MATS.values()}
    for name, init in all_initializers(tiny_source_dir, tiny_analysis_dir).items():
        model, scratch = student(vocab), student(vocab)
        report = init.initialize(model)
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, scratch.state_dict()[k])}
        assert report.initializer == name
        assert changed == ffn == set(report.set_parameters), name
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in scratch.parameters())
        json.dumps(report.to_dict())


def test_full_experts_equals_xpert_with_a_full_rank_bank(tiny_source_dir, tiny_bank, tmp_path, vocab):
    # tiny_bank: experts 1 and 5 of every layer, weights 3:1, full-rank Tucker (an exact decomposition).
    layers = [{"layer": i, "experts": [1, 5], "weights": [0.75, 0.25], "scores": [1.0] * 8} for i in range(4)]
    selection = {"strategy": "fixture", "n": 2, "num_experts": 8, "top_k": 2, "domains": ["a"], "score": "fixed"}
    selection["source"] = source_record(source_fingerprint(tiny_source_dir), tiny_source_dir)
    (tmp_path / "selection.json").write_text(json.dumps({**selection, "layers": layers}))
    full, xpert = student(vocab), student(vocab)
    FullExpertsInit(str(tiny_source_dir), str(tmp_path / "selection.json")).initialize(full)
    XpertInit(str(tiny_bank)).initialize(xpert)
    for j in range(2):
        for m in MATS:
            assert torch.allclose(weights(full, j)[m], weights(xpert, j)[m], atol=1e-5), (j, m)


def test_full_experts_without_rescale_is_the_weighted_average(tiny_source_dir, tiny_analysis_dir, live, vocab):
    selection = json.loads((tiny_analysis_dir / "selection.json").read_text())
    model = student(vocab)
    selection_file = str(tiny_analysis_dir / "selection.json")
    FullExpertsInit(str(tiny_source_dir), selection_file, transfer=FFNTransfer(rescale="none")).initialize(model)
    record = selection["layers"][3]  # student layer 1 <- source layer 3 (uniform stride 4 -> 2)
    w = torch.tensor(record["weights"]) / sum(record["weights"])
    for m in MATS:
        average = sum(wi * live(3, e, m) for wi, e in zip(w.tolist(), record["experts"], strict=True))
        assert torch.allclose(weights(model, 1)[m], average, atol=1e-5), m


def test_single_expert_copies_the_most_frequent_expert(tiny_source_dir, tiny_analysis_dir, live, vocab):
    model = student(vocab)
    report = SingleExpertInit(str(tiny_source_dir), str(tiny_analysis_dir)).initialize(model)
    freq = mean_frequency(tiny_analysis_dir)
    for j, layer in enumerate([0, 3]):
        top = int(torch.argmax(freq[layer]))  # argmax returns the first (lowest id) of ties
        assert report.details["experts"][str(layer)] == [top]
        for m in MATS:
            assert torch.equal(weights(model, j)[m], live(layer, top, m)), (j, m)


def test_random_experts_is_the_seeded_random_selection_of_xperts_size(tiny_source_dir, tiny_analysis_dir, vocab):
    counts = ActivationCounts.load(tiny_analysis_dir)
    reports = {}
    for seed in (0, 1):
        reports[seed] = RandomExpertsInit(
            str(tiny_source_dir), str(tiny_analysis_dir), seed=seed, consolidator=FAST
        ).initialize(student(vocab))
        expected = RandomExpertSelector(n=2, seed=seed).select(counts)  # n: XPERT's selection has n = 2
        chosen = reports[seed].details["selection"]["layers"]
        assert [r["experts"] for r in chosen] == [layer.experts for layer in expected.layers]
    assert reports[0].details["experts"] != reports[1].details["experts"]
    again = RandomExpertsInit(str(tiny_source_dir), str(tiny_analysis_dir), seed=0, consolidator=FAST).initialize(
        student(vocab)
    )
    assert again.details["experts"] == reports[0].details["experts"]


def test_a_staged_control_bank_gives_the_same_student_and_another_bank_is_refused(
    tiny_source_dir, tiny_analysis_dir, tiny_bank, vocab, tmp_path
):
    from xpert_pl.errors import ConfigError

    args = (str(tiny_source_dir), str(tiny_analysis_dir))
    in_memory = RandomExpertsInit(*args, seed=1, consolidator=FAST)
    in_memory.build_bank().save(tmp_path / "bank")  # what `xpert bench run` does once, as a stage
    expected, staged = student(vocab), student(vocab)
    in_memory.initialize(expected)
    RandomExpertsInit(*args, seed=1, consolidator=FAST, bank=str(tmp_path / "bank")).initialize(staged)
    for name, tensor in expected.state_dict().items():  # the saved bank holds float32 factors of a float64 HOOI
        torch.testing.assert_close(staged.state_dict()[name], tensor, rtol=1e-5, atol=1e-7, msg=name)
    for other in (
        RandomExpertsInit(*args, seed=2, consolidator=FAST, bank=str(tmp_path / "bank")),
        RareExpertsInit(*args, consolidator=FAST, bank=str(tmp_path / "bank")),
        RandomExpertsInit(*args, seed=1, bank=str(tmp_path / "bank")),
    ):  # other Tucker settings
        with pytest.raises(ConfigError, match="another selection, other Tucker settings, another neuron alignment"):
            other.preflight()


def test_aligned_xpert_is_xpert_on_an_aligned_bank_of_the_same_selection(
    tiny_source_dir, tiny_analysis_dir, vocab, tmp_path
):
    from xpert_pl.bank import extract_bank
    from xpert_pl.errors import ConfigError
    from xpert_pl.initializers import AlignedXpertInit

    args = (str(tiny_source_dir), str(tiny_analysis_dir))
    selection = json.loads((tiny_analysis_dir / "selection.json").read_text())
    source = load_causal_lm(tiny_source_dir)
    for align in (True, False):  # XPERT's banks of the analysis's own selection, with and without alignment
        bank = extract_bank(source, selection, FAST, {"model": args[0]}, progress=False, align_neurons=align)
        bank.save(tmp_path / f"bank-{align}")
    grouped = extract_bank(source, selection, FAST, {"model": args[0]}, False, group_layers=2, align_neurons=True)
    grouped.save(tmp_path / "bank-grouped")
    aligned_init = AlignedXpertInit(*args, consolidator=FAST)
    built = aligned_init.build_bank().manifest
    assert [layer["experts"] for layer in built["selection"]["layers"]] == [x["experts"] for x in selection["layers"]]
    correlation = built["align_neurons"]["correlation"]
    assert all(c["after"] >= c["correlation_before"] for c in correlation.values()), correlation
    aligned, on_bank, unaligned = student(vocab), student(vocab), student(vocab)
    report = aligned_init.initialize(aligned)
    XpertInit(str(tmp_path / "bank-True")).initialize(on_bank)
    XpertInit(str(tmp_path / "bank-False")).initialize(unaligned)
    for j in range(2):
        for m, tensor in weights(on_bank, j).items():  # the bank is saved as float32 factors of a float64 HOOI
            torch.testing.assert_close(weights(aligned, j)[m], tensor, rtol=1e-5, atol=1e-6, msg=f"layer {j} {m}")
    assert any(not torch.allclose(weights(aligned, j)["up"], weights(unaligned, j)["up"], atol=1e-4) for j in range(2))
    assert report.details["selection"]["layers"] == built["selection"]["layers"]
    with pytest.raises(ConfigError, match="another neuron alignment"):  # XPERT's unaligned bank is not this method's
        AlignedXpertInit(*args, consolidator=FAST, bank=str(tmp_path / "bank-False")).preflight()
    with pytest.raises(ConfigError, match="or grouped layers"):
        AlignedXpertInit(*args, consolidator=FAST, bank=str(tmp_path / "bank-grouped")).preflight()
    AlignedXpertInit(*args, consolidator=FAST, bank=str(tmp_path / "bank-True")).preflight()


def test_single_domain_experts_are_that_domains_specialists(tiny_source_dir, tiny_analysis_dir, vocab):
    from xpert_pl.analysis import DomainSpecialistSelector
    from xpert_pl.errors import ConfigError
    from xpert_pl.initializers import SingleDomainExpertsInit

    counts = ActivationCounts.load(tiny_analysis_dir)
    args = (str(tiny_source_dir), str(tiny_analysis_dir))
    chosen = {}
    for domain in ("a", "b"):  # the tiny analysis's domains
        report = SingleDomainExpertsInit(*args, domain=domain, consolidator=FAST).initialize(student(vocab))
        expected = DomainSpecialistSelector(domain, n=2).select(counts)
        chosen[domain] = [r["experts"] for r in report.details["selection"]["layers"]]
        assert chosen[domain] == [layer.experts for layer in expected.layers]
    assert chosen["a"] != chosen["b"]
    with pytest.raises(ConfigError, match="domain 'poetry' was not analysed"):
        SingleDomainExpertsInit(*args, domain="poetry").preflight()


def test_rare_experts_are_the_least_frequent(tiny_source_dir, tiny_analysis_dir, vocab):
    report = RareExpertsInit(str(tiny_source_dir), str(tiny_analysis_dir), n=3, consolidator=FAST).initialize(
        student(vocab)
    )
    freq = mean_frequency(tiny_analysis_dir)
    for layer, ids in report.details["experts"].items():
        assert len(ids) == 3
        rest = [e for e in range(8) if e not in ids]
        assert max(freq[int(layer), ids]) <= min(freq[int(layer), rest])
    expected = LeastFrequentSelector(n=3).select(ActivationCounts.load(tiny_analysis_dir))
    assert [r["experts"] for r in report.details["selection"]["layers"]] == [x.experts for x in expected.layers]


def test_weight_selection_takes_evenly_spaced_elements_of_the_expert_average(tiny_source_dir, live, vocab):
    model = student(vocab, hidden_size=64, intermediate_size=96)
    report = WeightSelectionInit(str(tiny_source_dir)).initialize(model)
    assert report.details["depth_map"] == [0, 1]  # first-N layers
    rows, cols = uniform_indices(256, 96), uniform_indices(128, 64)
    for m in MATS:
        average = torch.stack([live(1, e, m).double() for e in range(8)]).mean(0).float()
        expected = average[rows][:, cols] if m != "down" else average[cols][:, rows]
        assert torch.allclose(weights(model, 1)[m], expected, atol=1e-6), m


def test_linear_expansion_fit_is_exact_on_linear_layers():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    layers = [a + (i + 1) / 4 * b for i in range(4)]
    fa, fb = fit_linear_expansion(layers)
    assert torch.allclose(fa, a, atol=1e-10) and torch.allclose(fb, b, atol=1e-10)
    one_a, one_b = fit_linear_expansion([a])
    assert torch.equal(one_a, a) and torch.equal(one_b, torch.zeros_like(a))


def test_linear_expansion_student_layers_lie_on_the_fitted_line(tiny_source_dir, live, vocab):
    model = student(vocab, num_hidden_layers=3)
    report = LinearExpansionInit(str(tiny_source_dir)).initialize(model)
    assert report.details["depth_map"] == [0, 1, 2] and report.details["fitted_to_layers"] == [0, 1, 2, 3]
    per_layer = [torch.stack([live(i, e, "up").double() for e in range(8)]).mean(0) for i in range(4)]
    # Independent least squares on the flattened matrices: [1, t] @ [A; B] ~ theta, t = (i + 1) / 4.
    design = torch.tensor([[1.0, (i + 1) / 4] for i in range(4)], dtype=torch.float64)
    solution = torch.linalg.lstsq(design, torch.stack([x.flatten() for x in per_layer])).solution
    a, b = solution[0].reshape(256, 128), solution[1].reshape(256, 128)
    for j in range(3):
        assert torch.allclose(weights(model, j)["up"].double(), a + (j + 1) / 3 * b, atol=1e-5), j


def test_missing_inputs_are_named(tiny_source_dir, tmp_path, vocab):
    with pytest.raises(FileNotFoundError, match="xpert analyze"):
        RandomExpertsInit(str(tiny_source_dir), str(tmp_path)).initialize(student(vocab))
    with pytest.raises(FileNotFoundError, match="xpert analyze"):
        FullExpertsInit(str(tiny_source_dir), str(tmp_path / "selection.json")).initialize(student(vocab))
    with pytest.raises(ValueError, match="needs `analysis`"):
        WeightSelectionInit(str(tiny_source_dir), expert="top")
    with pytest.raises(ValueError, match="expert norms"):
        LinearExpansionInit(str(tiny_source_dir), transfer=FFNTransfer(rescale="expert_norm"))
