"""UntrainedSourceInit: the XPERT procedure on an untrained copy of the source."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard

from xpert_pl.initializers import UntrainedSourceInit, XpertInit
from xpert_pl.models import DenseStudent, load_causal_lm, make_untrained_copy
from xpert_pl.tokenizer import load_tokenizer


def student(vocab: int):
    torch.manual_seed(0)
    return DenseStudent("llama-tiny").build(vocab)


def test_the_copy_has_the_architecture_and_tokenizer_but_fresh_weights(tiny_source_dir, tmp_path):
    copy = make_untrained_copy(str(tiny_source_dir), str(tmp_path / "copy"), seed=3)
    trained, fresh = load_causal_lm(tiny_source_dir), load_causal_lm(copy)
    ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    ignore = {"_name_or_path", *ids}
    assert {k: v for k, v in fresh.config.to_dict().items() if k not in ignore} == {
        k: v for k, v in trained.config.to_dict().items() if k not in ignore
    }
    assert (copy / "tokenizer.json").is_file()
    tokenizer = load_tokenizer(copy)
    for name in ("config.json", "generation_config.json"):
        saved = json.loads((copy / name).read_text())
        assert {k: saved.get(k) for k in ids} == {k: getattr(tokenizer, k) for k in ids}, name
    card = ModelCard.load(copy / "README.md").data.xpert
    assert card["method"] == "untrained copy (seed 3)" and card["source"] == str(tiny_source_dir)
    assert json.loads((copy / "untrained.json").read_text()) == {"untrained_copy_of": str(tiny_source_dir), "seed": 3}
    same = [k for k, v in fresh.state_dict().items() if v.ndim == 2 and torch.equal(v, trained.state_dict()[k])]
    assert same == []


def test_the_procedure_runs_end_to_end_and_differs_from_the_trained_source(
    tiny_bank, tiny_untrained_bank, tiny_source_dir
):
    vocab = json.loads((tiny_source_dir / "config.json").read_text())["vocab_size"]
    control, xpert, scratch = student(vocab), student(vocab), student(vocab)
    report = UntrainedSourceInit(str(tiny_untrained_bank)).initialize(control)
    XpertInit(str(tiny_bank)).initialize(xpert)
    changed = {k for k, v in control.state_dict().items() if not torch.equal(v, scratch.state_dict()[k])}
    assert report.initializer == "untrained_source" and changed == set(report.set_parameters)
    assert all(".mlp." in k for k in changed) and len(changed) == 6
    for j in range(2):
        a, b = control.model.layers[j].mlp.up_proj.weight, xpert.model.layers[j].mlp.up_proj.weight
        assert (a - b).norm() > 0.1 * b.norm()


def test_a_bank_of_a_trained_source_is_refused(tiny_bank, tiny_source_dir):
    vocab = json.loads((tiny_source_dir / "config.json").read_text())["vocab_size"]
    with pytest.raises(ValueError, match="xpert untrained-source"):
        UntrainedSourceInit(str(tiny_bank)).initialize(student(vocab))
