"""End to end: tiny OLMoE -> selection -> extract -> save -> load -> XpertInit of a shallower, narrower student."""

from __future__ import annotations

import torch

from xpert_pl.bank import KnowledgeBank, TuckerConsolidator, extract_bank
from xpert_pl.initializers import XpertInit
from xpert_pl.models import DenseStudent, OlmoeSource


def test_olmoe_to_dense_student(tmp_path):
    torch.manual_seed(0)
    source = OlmoeSource()
    moe = source.build(vocab_size=97)
    selection = {
        "strategy": "consistency",
        "n": 2,
        "num_experts": 8,
        "top_k": 2,
        "domains": ["a", "b"],
        "score": "min_freq",
        "layers": [{"layer": i, "experts": [i, 7 - i], "weights": [0.6, 0.4], "scores": [1.1, 0.9]} for i in range(4)],
    }
    # Few HOOI sweeps keep the test fast; the ranks are the defaults (0.75, 0.75, 1.0).
    bank = extract_bank(moe, selection, TuckerConsolidator(n_iter_max=2), source.describe(), progress=False)
    bank.save(tmp_path / "bank")
    del moe  # the bank must be usable without the source model
    loaded = KnowledgeBank.load(tmp_path / "bank")
    assert loaded.source_layers == [0, 1, 2, 3] and loaded.shapes["gate"] == (256, 128)
    assert loaded.manifest["source"]["preset"] == "olmoe-tiny"

    builder = DenseStudent(overrides={"intermediate_size": 128})
    torch.manual_seed(1)
    student = builder.build(97)
    torch.manual_seed(1)
    scratch = builder.build(97)
    report = XpertInit(bank=str(tmp_path / "bank")).initialize(student)

    assert report.details["depth_map"] == [0, 3]
    assert all(layer["neurons_set"] == 128 for layer in report.details["layers"])
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, scratch.state_dict()[k])}
    projections = ("gate_proj", "up_proj", "down_proj")
    assert changed == {f"model.layers.{j}.mlp.{p}.weight" for j in range(2) for p in projections}
    logits = student(torch.randint(0, 97, (1, 12))).logits
    assert logits.shape == (1, 12, 97) and bool(torch.isfinite(logits).all())
