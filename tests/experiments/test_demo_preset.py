"""The demo preset end to end on a tiny corpus: tokenizer, source MoE, analysis, bank, two students, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from xpert_pl.experiments.matrix import load_matrix
from xpert_pl.experiments.runner import MatrixRunner
from xpert_pl.layout import RunLayout
from xpert_pl.report import write_report

REPO = Path(__file__).resolve().parents[2]


def tiny_demo_matrix(tmp_path: Path, data_root: Path) -> Path:
    """configs/bench/demo.yaml as shipped, made tiny: its own data root, a small vocabulary, a few steps."""
    spec = yaml.safe_load((REPO / "configs" / "bench" / "demo.yaml").read_text())
    spec["out_dir"] = str(tmp_path / "demo")
    spec["tokenizer"] = {"vocab_size": 320}
    spec["data"] = {"data_root": str(data_root), "max_docs_per_domain": None}
    spec["source"]["steps"] = 6
    spec["budgets"] = {"demo": 4}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, corpus_writer):
    root = corpus_writer(tmp_path_factory.mktemp("demo_data"), docs_per_domain=200)
    matrix = tiny_demo_matrix(tmp_path_factory.mktemp("demo"), root)
    counts = MatrixRunner(load_matrix(matrix, root=REPO)).run(matrix)
    layout = RunLayout(load_matrix(matrix, root=REPO).out_dir)
    return layout, matrix, counts, write_report(str(layout.root))


def test_the_demo_writes_every_stage_and_the_standard_report(demo_run):
    layout, _, counts, report = demo_run
    assert counts == {"done": 2} and report == layout.report / "report.md"
    for artifact in (
        layout.tokenizer / "tokenizer.json",
        layout.source_hf / "config.json",
        layout.selection,
        layout.analysis / "counts.safetensors",
        layout.analysis / "heatmaps" / "layer_00.png",
        layout.bank / "bank.safetensors",
        layout.bank / "manifest.json",
    ):
        assert artifact.is_file(), artifact
    settings = json.loads((layout.tokenizer / "xpert_tokenizer.json").read_text())["settings"]
    assert settings == {"vocab_size": 320, "max_chars_per_domain": 2_000_000}
    text = report.read_text()
    # What the demo report showed (selection, curves, per-domain losses) plus the source's own validation loss.
    assert "## Source MoE" in text and "tokens seen in training: 12,288" in text  # 6 steps x 16 x 128
    source_loss = [line for line in text.splitlines() if line.startswith("| all domains |")]
    assert len(source_loss) == 1  # the source's own loss beside the unigram floor, on the same tokens
    source, unigram = (float(cell) for cell in source_loss[0].split("|")[2:4])
    assert source > 0 and unigram == round(json.loads(layout.unigram.read_text())["loss"]["all"], 4)
    assert "Selection: strategy `consistent`" in text and "## Loss curves" in text
    assert "| scratch |" in text and "| xpert |" in text and "val loss: code" in text
    assert text.index("## Source MoE") < text.index("## Expert activation") < text.index("## Results")
    figures = sorted(p.name for p in (layout.report / "figures").glob("source_*.png"))
    assert len(figures) == 1 and f"figures/{figures[0]}" in text  # the source's curve beside the students'
    wall = json.loads(layout.wall_times.read_text())
    assert list(wall) == ["tokenizer", "source MoE", "unigram baseline", "analysis", "knowledge bank"]
    cells = [
        json.loads((layout.cell("2l", "demo", m, 0) / "cell.json").read_text())["wall_s"] for m in ("scratch", "xpert")
    ]
    total = [line.rsplit("|", 2)[1].strip() for line in text.splitlines() if line.startswith("| total (sum")]
    assert total == [f"{(sum(wall.values()) + sum(cells)) / 60:.1f}"]


def test_students_share_everything_but_the_ffn(demo_run):
    layout = demo_run[0]
    init = json.loads((layout.cell("2l", "demo", "xpert", 0) / "init_report.json").read_text())
    assert init["initializer"] == "xpert"
    assert sorted(init["set_parameters"]) == sorted(
        f"model.layers.{j}.mlp.{m}_proj.weight" for j in range(2) for m in ("gate", "up", "down")
    )
    selection = json.loads(layout.selection.read_text())
    assert len(selection["layers"]) == 4 and all(len(layer["experts"]) == 2 for layer in selection["layers"])


def test_exported_students_load_with_plain_transformers(demo_run):
    layout = demo_run[0]
    for method in ("scratch", "xpert"):
        model = AutoModelForCausalLM.from_pretrained(layout.cell("2l", "demo", method, 0) / "hf")
        logits = model(torch.tensor([[1, 2, 3]])).logits
        assert logits.shape == (1, 3, 320) and torch.isfinite(logits).all()


def test_a_second_demo_run_reuses_every_stage(demo_run, caplog):
    layout, matrix = demo_run[:2]
    metrics = layout.cell("2l", "demo", "xpert", 0) / "metrics.csv"
    before, wall = metrics.stat().st_mtime_ns, json.loads(layout.wall_times.read_text())
    with caplog.at_level("INFO", logger="xpert_pl.experiments.stages"):
        assert MatrixRunner(load_matrix(matrix, root=REPO)).run(matrix) == {"skipped": 2}
    cached = [r.message for r in caplog.records if "cached" in r.message]
    assert len(cached) == 5, cached  # tokenizer, source, unigram baseline, analysis, bank
    assert metrics.stat().st_mtime_ns == before
    assert json.loads(layout.wall_times.read_text()) == wall  # cached stages add no time
