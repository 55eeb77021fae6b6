"""The whole pipeline end to end on a tiny corpus: tokenizer, source MoE, analysis, bank, two students, report."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from xpert_pl.demo import demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, corpus_writer):
    root = corpus_writer(tmp_path_factory.mktemp("demo_data"), docs_per_domain=200)
    out = tmp_path_factory.mktemp("demo") / "run"
    report = demo(
        out_dir=str(out),
        data_root=str(root),
        source_steps=6,
        student_steps=4,
        max_docs_per_domain=None,
        tokenizer_vocab_size=320,
    )
    return out, report, root


def test_demo_writes_every_stage_and_the_report(demo_run):
    out, report, _ = demo_run
    assert report == out / "report.md"
    for artifact in (
        "tokenizer/tokenizer.json",
        "source/hf/config.json",
        "analysis/selection.json",
        "analysis/counts.safetensors",
        "analysis/heatmaps/layer_00.png",
        "bank/bank.safetensors",
        "bank/manifest.json",
        "loss_curves.png",
    ):
        assert (out / artifact).is_file(), artifact
    # The tokenizer is trained as the first stage, with the settings the data modules once used implicitly.
    settings = json.loads((out / "tokenizer" / "xpert_tokenizer.json").read_text())["settings"]
    assert settings == {"vocab_size": 320, "max_chars_per_domain": 2_000_000}
    text = report.read_text()
    assert "| val loss (all) |" in text and "scratch" in text and "xpert" in text
    assert "![validation loss](loss_curves.png)" in text


def test_students_share_everything_but_the_ffn(demo_run):
    out, _, _ = demo_run
    init = json.loads((out / "students" / "xpert" / "seed0" / "init_report.json").read_text())
    assert init["initializer"] == "xpert"
    assert sorted(init["set_parameters"]) == sorted(
        f"model.layers.{j}.mlp.{m}_proj.weight" for j in range(2) for m in ("gate", "up", "down")
    )
    selection = json.loads((out / "analysis" / "selection.json").read_text())
    assert len(selection["layers"]) == 4 and all(len(layer["experts"]) == 2 for layer in selection["layers"])


def test_exported_students_load_with_plain_transformers(demo_run):
    out, _, _ = demo_run
    for method in ("scratch", "xpert"):
        model = AutoModelForCausalLM.from_pretrained(out / "students" / method / "seed0" / "hf")
        logits = model(torch.tensor([[1, 2, 3]])).logits
        assert logits.shape == (1, 3, 320) and torch.isfinite(logits).all()


def test_a_second_demo_run_reuses_every_stage(demo_run, caplog):
    out, _, root = demo_run
    before = (out / "students" / "xpert" / "seed0" / "metrics.csv").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="xpert_pl.experiments.stages"):
        demo(
            out_dir=str(out),
            data_root=str(root),
            source_steps=6,
            student_steps=4,
            max_docs_per_domain=None,
            tokenizer_vocab_size=320,
        )
    cached = [r.message for r in caplog.records if "cached" in r.message]
    assert len(cached) == 6, cached  # tokenizer, source, analysis, bank, two students
    assert (out / "students" / "xpert" / "seed0" / "metrics.csv").stat().st_mtime_ns == before
