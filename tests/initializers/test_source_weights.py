"""WithSourceWeights: the source's attention, norms and embeddings on top of another initializer."""

from __future__ import annotations

import json

import pytest
import torch

from xpert_pl.adaptation import select_hidden
from xpert_pl.initializers import ScratchInit, WithSourceWeights, XpertInit
from xpert_pl.models import DenseStudent, load_causal_lm


@pytest.fixture(scope="module")
def source_state(tiny_source_dir) -> dict[str, torch.Tensor]:
    return load_causal_lm(tiny_source_dir).state_dict()


@pytest.fixture(scope="module")
def vocab(tiny_source_dir) -> int:
    return json.loads((tiny_source_dir / "config.json").read_text())["vocab_size"]


def student(vocab: int, **overrides):
    torch.manual_seed(0)
    return DenseStudent("llama-tiny", overrides=overrides).build(vocab)


def test_same_shape_copies_attention_norms_and_embeddings(tiny_source_dir, tiny_bank, source_state, vocab):
    model, scratch = student(vocab), student(vocab)
    init = WithSourceWeights(XpertInit(str(tiny_bank)), str(tiny_source_dir), attention=True, embeddings=True)
    report = init.initialize(model)
    state = model.state_dict()
    for j, i in enumerate([0, 3]):  # uniform stride 4 -> 2
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            key = f"self_attn.{p}.weight"
            assert torch.equal(state[f"model.layers.{j}.{key}"], source_state[f"model.layers.{i}.{key}"])
        assert torch.equal(
            state[f"model.layers.{j}.input_layernorm.weight"], source_state[f"model.layers.{i}.input_layernorm.weight"]
        )
    for key in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(state[key], source_state[key])
    changed = {k for k, v in state.items() if not torch.equal(v, scratch.state_dict()[k])}
    # Norms of both models start at ones, so "changed" leaves them out; every other written tensor differs.
    assert changed <= set(report.set_parameters)
    assert {f"model.layers.{j}.mlp.up_proj.weight" for j in range(2)} <= changed
    assert report.initializer == "xpert+source_weights"
    assert report.details["source_weights"]["attention"]["depth_map"] == [0, 3]
    json.dumps(report.to_dict())


def test_narrower_student_keeps_whole_evenly_spaced_heads(tiny_source_dir, source_state, vocab):
    model = student(vocab, hidden_size=64, num_attention_heads=2, num_key_value_heads=2)  # head_dim 32, as the source
    report = WithSourceWeights(ScratchInit(), str(tiny_source_dir)).initialize(model)
    assert report.details["source_weights"]["attention"]["heads_kept"] == [0, 3]
    hidden = select_hidden(128, 64)
    q = source_state["model.layers.3.self_attn.q_proj.weight"].reshape(4, 32, 128)
    expected_q = q[[0, 3]].reshape(64, 128)[:, hidden]
    assert torch.equal(model.model.layers[1].self_attn.q_proj.weight, expected_q)
    o = source_state["model.layers.3.self_attn.o_proj.weight"].reshape(128, 4, 32)
    assert torch.equal(model.model.layers[1].self_attn.o_proj.weight, o[:, [0, 3]].reshape(128, 64)[hidden])
    norm = source_state["model.layers.0.post_attention_layernorm.weight"][hidden]
    assert torch.equal(model.model.layers[0].post_attention_layernorm.weight, norm)


def test_impossible_requests_are_refused(tiny_source_dir, vocab):
    with pytest.raises(ValueError, match="head_dim"):
        WithSourceWeights(ScratchInit(), str(tiny_source_dir)).initialize(student(vocab, hidden_size=64))
    with pytest.raises(ValueError, match="vocabulary"):
        WithSourceWeights(ScratchInit(), str(tiny_source_dir), attention=False, embeddings=True).initialize(
            student(vocab + 1)
        )
    with pytest.raises(ValueError, match="attention=True or embeddings=True"):
        WithSourceWeights(ScratchInit(), str(tiny_source_dir), attention=False)
