"""Knowledge-vs-statistics controls: each keeps one statistic of XPERT's weights and destroys the function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xpert_pl.initializers import NormMatchedScratchInit, ShuffledXpertInit, SpectrumMatchedInit, XpertInit

MATS = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def ffn(model, j: int) -> dict[str, torch.Tensor]:
    return {m: getattr(model.model.layers[j].mlp, p).weight.detach().clone() for m, p in MATS.items()}


def swiglu(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ w["gate"].T) * (x @ w["up"].T)) @ w["down"].T


@pytest.fixture
def xpert(distinct_bank, make_student):
    model = make_student(layers=3, intermediate=48)  # narrower than the bank's 64: only the kept neurons move
    XpertInit(str(distinct_bank)).initialize(model)
    return [ffn(model, j) for j in range(3)]


def rows_as_sorted_tuples(matrix: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(row.tolist()) for row in matrix)


def test_shuffled_keeps_every_row_and_destroys_the_function(distinct_bank, make_student, xpert):
    model = make_student(layers=3, intermediate=48)
    report = ShuffledXpertInit(str(distinct_bank), seed=1).initialize(model)
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    for j in range(3):
        shuffled = ffn(model, j)
        for m in ("gate", "up"):
            assert rows_as_sorted_tuples(shuffled[m]) == rows_as_sorted_tuples(xpert[j][m])
            assert not torch.equal(shuffled[m], xpert[j][m])
        assert rows_as_sorted_tuples(shuffled["down"].T) == rows_as_sorted_tuples(xpert[j]["down"].T)
        assert not torch.allclose(swiglu(shuffled, x), swiglu(xpert[j], x), atol=1e-3)
    assert report.initializer == "shuffled_xpert" and report.details["control"]["seed"] == 1


def test_spectrum_matched_has_xperts_singular_values_and_other_matrices(distinct_bank, make_student, xpert):
    model = make_student(layers=3, intermediate=48)
    report = SpectrumMatchedInit(str(distinct_bank)).initialize(model)
    for j in range(3):
        for m, weight in ffn(model, j).items():
            expected = torch.linalg.svdvals(xpert[j][m].double())
            assert torch.allclose(torch.linalg.svdvals(weight.double()), expected, atol=1e-5, rtol=1e-5)
            assert (weight - xpert[j][m]).norm() > 0.5 * xpert[j][m].norm()
    assert report.initializer == "spectrum_matched"


def test_norm_matched_scratch_has_xperts_norms_and_scratch_directions(distinct_bank, make_student, xpert):
    model, scratch = make_student(layers=3, intermediate=48), make_student(layers=3, intermediate=48)
    NormMatchedScratchInit(str(distinct_bank)).initialize(model)
    for j in range(3):
        fresh = ffn(scratch, j)
        for m, weight in ffn(model, j).items():
            assert weight.norm().item() == pytest.approx(xpert[j][m].norm().item(), rel=1e-5)
            assert torch.allclose(weight / weight.norm(), fresh[m] / fresh[m].norm(), atol=1e-6)


def test_the_same_seed_gives_the_same_control(distinct_bank, make_student):
    a, b, c = (make_student(layers=3) for _ in range(3))
    SpectrumMatchedInit(str(distinct_bank), seed=5).initialize(a)
    SpectrumMatchedInit(str(distinct_bank), seed=5).initialize(b)
    SpectrumMatchedInit(str(distinct_bank), seed=6).initialize(c)
    assert torch.equal(ffn(a, 0)["up"], ffn(b, 0)["up"]) and not torch.equal(ffn(a, 0)["up"], ffn(c, 0)["up"])
