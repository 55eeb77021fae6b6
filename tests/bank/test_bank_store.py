"""Bank extraction, save/load round trip, integrity checks and atomic saving."""

from __future__ import annotations

import json

import pytest
import torch

import xpert_pl.bank.store as store
from xpert_pl.bank import BankIntegrityError, KnowledgeBank, TuckerConsolidator, extract_bank
from xpert_pl.sources.experts import MATRICES, moe_layers, stack_experts


def test_extract_shapes_weights_and_norms(olmoe, small_bank):
    assert small_bank.source_layers == [0, 1]
    assert small_bank.num_experts_selected == {0: 2, 1: 2}
    assert small_bank.shapes == {"gate": (64, 32), "up": (64, 32), "down": (32, 64)}
    assert torch.allclose(small_bank.weights[1], torch.tensor([0.7, 0.3]))
    entry = small_bank.entry(1, "down")
    assert entry.core.shape == (16, 32, 2) and entry.U1.shape == (32, 16) and entry.U3.shape == (2, 2)
    stacked = stack_experts(moe_layers(olmoe)[1].experts, [1, 4], "down")
    expected_norm = (stacked[..., 0].norm() + stacked[..., 1].norm()) / 2
    assert entry.expert_norm == pytest.approx(expected_norm.item(), rel=1e-5)
    assert 0 < entry.factors.relative_error < 1


def test_extract_reads_a_selection_file(olmoe, selection, tmp_path):
    selection["layers"] = selection["layers"][3:]
    path = tmp_path / "selection.json"
    path.write_text(json.dumps(selection))
    bank = extract_bank(olmoe, path, TuckerConsolidator(ranks=[4, 4, 1], n_iter_max=2), progress=False)
    assert bank.source_layers == [3] and bank.experts[3] == [3, 6]
    assert bank.manifest["selection"]["strategy"] == "consistency"


def test_extract_rejects_a_bad_selection(olmoe, selection):
    selection["layers"] = [{"layer": 0, "experts": [0, 9], "weights": [0.5, 0.5], "scores": [1, 1]}]
    with pytest.raises(ValueError, match="distinct ids"):
        extract_bank(olmoe, selection, TuckerConsolidator(), progress=False)
    selection["layers"] = [{"layer": 7, "experts": [0], "weights": [1.0], "scores": [1]}]
    with pytest.raises(ValueError, match="layer 7"):
        extract_bank(olmoe, selection, TuckerConsolidator(), progress=False)


def test_save_load_round_trip(small_bank, tmp_path):
    out = small_bank.save(tmp_path / "bank")
    assert sorted(p.name for p in out.iterdir()) == ["bank.safetensors", "manifest.json", "xpert_artifact.json"]
    loaded = KnowledgeBank.load(out)
    original, restored = small_bank.tensors(), loaded.tensors()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert "layers.0.gate.core" in restored and "layers.1.weights" in restored
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("format_version", "source", "selection", "tucker", "shapes", "layers", "tensors"):
        assert key in manifest
    assert manifest["source"]["model_type"] == "olmoe" and manifest["source"]["class"] == "OlmoeSource"
    record = manifest["layers"][0]
    assert record["experts"] == [0, 3] and record["weights"] == pytest.approx([0.7, 0.3])
    assert set(record["matrices"]) == set(MATRICES)
    assert record["matrices"]["gate"]["ranks"] == [32, 16, 2]
    assert record["matrices"]["gate"]["relative_error"] == loaded.entry(0, "gate").factors.relative_error
    assert record["matrices"]["gate"]["algorithm"] == "hooi" == loaded.entry(0, "gate").factors.algorithm
    assert "energy" not in record["matrices"]["gate"]
    assert record["source_layers"] == [0] and record["expert_layers"] == [0, 0]
    assert manifest["tucker"]["algorithm"] == "auto" and manifest["grouping"] is None
    assert loaded.entry(0, "up").expert_norm == pytest.approx(small_bank.entry(0, "up").expert_norm)


def test_checksum_mismatch_and_missing_files_raise(small_bank, tmp_path):
    out = small_bank.save(tmp_path / "bank")
    data = bytearray((out / "bank.safetensors").read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor's data: still a loadable file, but not the saved one
    (out / "bank.safetensors").write_bytes(bytes(data))
    with pytest.raises(BankIntegrityError, match="checksum"):
        KnowledgeBank.load(out)
    (out / "bank.safetensors").unlink()
    with pytest.raises(BankIntegrityError, match="missing"):
        KnowledgeBank.load(out)
    with pytest.raises(BankIntegrityError, match="missing"):
        KnowledgeBank.load(tmp_path / "nowhere")


def test_manifest_and_tensors_must_agree(small_bank, tmp_path):
    out = small_bank.save(tmp_path / "bank")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["layers"][0]["matrices"]["gate"]["ranks"] = [10, 10, 2]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BankIntegrityError, match="shape"):
        KnowledgeBank.load(out)


def test_energy_ranks_are_recorded_per_entry(olmoe, selection, tmp_path):
    selection["layers"] = selection["layers"][:1]
    consolidator = TuckerConsolidator(ranks=[None, 0.5, 1.0], energy=0.8, n_iter_max=3)
    bank = extract_bank(olmoe, selection, consolidator, progress=False)
    entry = bank.entry(0, "gate").factors
    assert entry.ranks[1:] == (16, 2) and entry.ranks[0] < 64  # gate is 64 x 32; mode 0 chosen by energy
    loaded = KnowledgeBank.load(bank.save(tmp_path / "bank"))
    record = loaded.manifest["layers"][0]["matrices"]["gate"]
    assert record["energy"] == 0.8 and record["mode_energy"] == entry.mode_energy
    assert record["mode_energy"][0] >= 0.8 and record["mode_energy"][1:] == [None, None]
    assert loaded.entry(0, "gate").factors.ranks == entry.ranks and loaded.entry(0, "gate").factors.energy == 0.8
    assert loaded.manifest["tucker"]["energy"] == 0.8 and loaded.manifest["tucker"]["ranks"] == [None, 0.5, 1.0]


def _fail_on_call(monkeypatch, target: str, calls: int = 1) -> None:
    """Make `store.<target>` raise on its `calls`-th call (earlier calls run the real function)."""
    real, seen = getattr(store, target), []

    def fail(*args, **kwargs):
        seen.append(1)
        if len(seen) >= calls:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, target, fail)


# Each target runs at a different point of `save`: before the tensors exist, after they are written, and when
# the manifest is written last.
TARGETS = ["save_tensors", "sha256_file", "write_json"]


@pytest.mark.parametrize("target", TARGETS)
def test_interrupted_save_leaves_nothing(small_bank, tmp_path, monkeypatch, target):
    _fail_on_call(monkeypatch, target)
    with pytest.raises(RuntimeError, match="killed"):
        small_bank.save(tmp_path / "bank")
    assert list(tmp_path.iterdir()) == []  # no bank and no temporary sibling


@pytest.mark.parametrize("target", TARGETS)
def test_interrupted_save_keeps_the_previous_bank(small_bank, olmoe, selection, tmp_path, monkeypatch, target):
    out = small_bank.save(tmp_path / "bank")
    before = {name: (out / name).read_bytes() for name in ("manifest.json", "bank.safetensors")}
    selection["layers"] = selection["layers"][2:3]
    other = extract_bank(olmoe, selection, TuckerConsolidator(ranks=[4, 4, 1], n_iter_max=2), progress=False)
    _fail_on_call(monkeypatch, target)
    with pytest.raises(RuntimeError, match="killed"):
        other.save(out)
    monkeypatch.undo()  # `load` checks the checksum with the real sha256_file
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]
    loaded = KnowledgeBank.load(out)
    assert loaded.source_layers == [0, 1]
    assert all(torch.equal(v, small_bank.tensors()[k]) for k, v in loaded.tensors().items())
