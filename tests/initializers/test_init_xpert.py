"""XpertInit: which parameters are set, with which values, and the adaptation to the student's shape."""

from __future__ import annotations

import json

import pytest
import torch

from xpert_pl.adaptation import select_hidden, select_neurons, spread_hidden
from xpert_pl.bank import BankIntegrityError
from xpert_pl.initializers import FFNTransfer, ScratchInit, UnsupportedStudentError, XpertInit
from xpert_pl.models import OlmoeSource

MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


def mlp_keys(num_layers: int) -> set[str]:
    return {f"model.layers.{j}.mlp.{p}.weight" for j in range(num_layers) for p in MLP_NAMES}


def mlp_weights(model, j: int) -> dict[str, torch.Tensor]:
    mlp = model.model.layers[j].mlp
    return {"gate": mlp.gate_proj.weight, "up": mlp.up_proj.weight, "down": mlp.down_proj.weight}


def test_sets_every_ffn_matrix_and_nothing_else(distinct_bank, make_student):
    student, scratch = make_student(layers=3), make_student(layers=3)
    report = XpertInit(bank=str(distinct_bank)).initialize(student)
    after, before = student.state_dict(), scratch.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == mlp_keys(3)
    assert set(report.set_parameters) == mlp_keys(3)
    assert report.initializer == "xpert"
    assert report.details["depth_map"] == [0, 2, 3]  # round(j * 3 / 2), halves up
    json.dumps(report.to_dict())


def test_identical_experts_are_copied_exactly(identical_bank, identical_experts, make_student):
    student = make_student()
    report = XpertInit(bank=str(identical_bank), transfer=FFNTransfer(rescale="expert_norm")).initialize(student)
    for j in range(2):
        for m, weight in mlp_weights(student, j).items():
            assert torch.allclose(weight, identical_experts[j][m][..., 0], atol=1e-4), (j, m)
    assert [layer["source_layer"] for layer in report.details["layers"]] == [0, 1]
    norms = report.details["layers"][0]["matrices"]["gate"]
    assert norms["norm_after"] == pytest.approx(identical_experts[0]["gate"][..., 0].norm().item(), rel=1e-4)
    assert norms["norm_before"] != pytest.approx(norms["norm_after"])


def test_width_halving_keeps_the_highest_energy_neurons(identical_bank, identical_experts, make_student):
    student = make_student(intermediate=32)
    report = XpertInit(bank=str(identical_bank)).initialize(student)
    expert = {m: x[..., 0] for m, x in identical_experts[1].items()}
    keep = select_neurons(expert["gate"], expert["up"], expert["down"], 32)
    weights = mlp_weights(student, 1)
    assert torch.allclose(weights["gate"], expert["gate"][keep], atol=1e-4)
    assert torch.allclose(weights["up"], expert["up"][keep], atol=1e-4)
    assert torch.allclose(weights["down"], expert["down"][:, keep], atol=1e-4)
    assert report.details["layers"][1]["neuron_selection"] == "top-energy"


def test_hidden_selection_uses_the_same_indices_everywhere(identical_bank, identical_experts, make_student):
    student = make_student(hidden=16)
    report = XpertInit(bank=str(identical_bank)).initialize(student)
    hidden = select_hidden(32, 16)
    weights, expert = mlp_weights(student, 0), {m: x[..., 0] for m, x in identical_experts[0].items()}
    assert torch.allclose(weights["gate"], expert["gate"][:, hidden], atol=1e-4)
    assert torch.allclose(weights["up"], expert["up"][:, hidden], atol=1e-4)
    assert torch.allclose(weights["down"], expert["down"][hidden], atol=1e-4)
    assert report.details["hidden_selection"] == "uniform element selection"


def test_wider_intermediate_leaves_the_extra_neurons_at_scratch(identical_bank, identical_experts, make_student):
    student, scratch = make_student(intermediate=80), make_student(intermediate=80)
    XpertInit(bank=str(identical_bank)).initialize(student)
    new, old = mlp_weights(student, 0), mlp_weights(scratch, 0)
    expert = {m: x[..., 0] for m, x in identical_experts[0].items()}
    assert torch.allclose(new["gate"][:64], expert["gate"], atol=1e-4)
    assert torch.allclose(new["down"][:, :64], expert["down"], atol=1e-4)
    assert torch.equal(new["gate"][64:], old["gate"][64:])
    assert torch.equal(new["up"][64:], old["up"][64:])
    assert torch.equal(new["down"][:, 64:], old["down"][:, 64:])


def test_wider_hidden_spreads_the_source_dimensions_and_keeps_scratch_elsewhere(
    identical_bank, identical_experts, make_student
):
    student, scratch = make_student(hidden=64), make_student(hidden=64)
    report = XpertInit(bank=str(identical_bank)).initialize(student)
    positions = spread_hidden(32, 64)
    assert positions.tolist() == [round(j * 63 / 31 + 1e-9) for j in range(32)]  # halves up, exactly as documented
    others = torch.ones(64, dtype=torch.bool)
    others[positions] = False
    new, old = mlp_weights(student, 0), mlp_weights(scratch, 0)
    expert = {m: x[..., 0] for m, x in identical_experts[0].items()}
    assert torch.allclose(new["gate"][:, positions], expert["gate"], atol=1e-4)
    assert torch.allclose(new["down"][positions], expert["down"], atol=1e-4)
    assert torch.equal(new["up"][:, others], old["up"][:, others])
    assert torch.equal(new["down"][others], old["down"][others])
    assert report.details["hidden_selection"].startswith("spread")


def test_rescale_modes(distinct_bank, distinct_experts, make_student):
    weights = torch.tensor([0.5, 0.3, 0.2])
    stack = distinct_experts[0]["up"]
    average = (stack * weights).sum(-1)
    mean_norm = torch.linalg.matrix_norm(stack.permute(2, 0, 1)).mean()
    results = {}
    for mode in ("none", "expert_norm", "target_init"):
        student = make_student(layers=4)
        XpertInit(bank=str(distinct_bank), transfer=FFNTransfer(rescale=mode)).initialize(student)
        results[mode] = mlp_weights(student, 0)["up"].detach().clone()
    assert torch.allclose(results["none"], average, atol=1e-4)
    assert results["expert_norm"].norm().item() == pytest.approx(mean_norm.item(), rel=1e-4)
    assert results["expert_norm"].norm() > results["none"].norm()  # averaging distinct experts shrinks
    scratch_norm = mlp_weights(make_student(layers=4), 0)["up"].norm()
    assert results["target_init"].norm().item() == pytest.approx(scratch_norm.item(), rel=1e-4)
    for result in results.values():  # every mode has the direction of the weighted average
        assert torch.allclose(result / result.norm(), average / average.norm(), atol=1e-4)


def test_uniform_collapse_and_first_depth_strategy(distinct_bank, distinct_experts, make_student):
    student = make_student(layers=2)
    transfer = FFNTransfer(rescale="none", depth_strategy="first")
    report = XpertInit(bank=str(distinct_bank), collapse="uniform", transfer=transfer).initialize(student)
    assert report.details["depth_map"] == [0, 1]
    assert torch.allclose(mlp_weights(student, 1)["down"], distinct_experts[1]["down"].mean(-1), atol=1e-4)


def test_errors_are_clear(distinct_bank, tmp_path, make_student):
    init = XpertInit(bank=str(tmp_path / "missing"))  # the bank is only read by initialize()
    with pytest.raises(BankIntegrityError, match="missing"):
        init.initialize(make_student())
    moe = OlmoeSource(overrides={"hidden_size": 32, "intermediate_size": 64}).build(vocab_size=97)
    with pytest.raises(UnsupportedStudentError, match="gate_proj"):
        XpertInit(bank=str(distinct_bank)).initialize(moe)
    with pytest.raises(ValueError, match="rescale"):
        XpertInit(bank=str(distinct_bank), transfer=FFNTransfer(rescale="max"))


def test_scratch_init_sets_nothing(make_student):
    student, scratch = make_student(), make_student()
    report = ScratchInit().initialize(student)
    assert report.initializer == "scratch" and report.set_parameters == []
    assert all(torch.equal(v, scratch.state_dict()[k]) for k, v in student.state_dict().items())
    json.dumps(report.to_dict())
