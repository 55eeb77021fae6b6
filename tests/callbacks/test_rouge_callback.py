"""RougeLCallback under a real Trainer: schedule, files, metrics (the protocol: tests/evaluation/test_rouge.py)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from xpert_pl.callbacks import RougeLCallback
from xpert_pl.data.prompts import alpaca_prompt
from xpert_pl.evaluation.rouge import rouge_l_scores
from xpert_pl.models import DenseStudent
from xpert_pl.tokenizer import load_tokenizer
from xpert_pl.training import CausalLMModule

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}


def _write_set(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture
def tiny_module(tokenizer) -> CausalLMModule:
    torch.manual_seed(0)
    module = CausalLMModule(DenseStudent("llama-tiny", SMALL), vocab_size=len(tokenizer))
    module.configure_model()
    return module


@pytest.fixture
def eval_root(tmp_path) -> Path:
    rows = {
        "dollyeval": [
            {"instruction": "Name a court.", "input": "", "output": "the court"},
            {"instruction": "Copy.", "input": "law document", "output": "law document"},
            {"instruction": "Say news.", "input": "", "output": "news"},
        ],
        "sni": [{"instruction": "Fix.", "input": "teh court", "output": ["the court", "a court"]}],
    }
    for name, set_rows in rows.items():
        _write_set(tmp_path / "data" / "eval" / name / "test.jsonl", set_rows)
    return tmp_path / "data"


class _RandomTokens(L.LightningDataModule):
    """Random token batches and the tokenizer the callback reads from `trainer.datamodule`."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        gen = torch.Generator().manual_seed(0)
        self.batches = [{"input_ids": torch.randint(0, len(tokenizer), (2, 8), generator=gen)} for _ in range(4)]

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.batches[:1], batch_size=None)


def _trainer(tmp_path: Path, callback: RougeLCallback, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path / "run", name="", version=""),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _callback(eval_root: Path, **kwargs) -> RougeLCallback:
    settings = {"sets": ["dollyeval", "sni"], "data_root": str(eval_root), "seeds": [1, 2], "max_new_tokens": 4}
    return RougeLCallback(**{**settings, **kwargs})


def test_fit_end_writes_generations_scores_and_metrics(tmp_path, eval_root, tiny_module, tokenizer):
    callback = _callback(eval_root, limit=2)
    trainer = _trainer(tmp_path, callback, max_steps=2, limit_val_batches=0)
    trainer.fit(tiny_module, datamodule=_RandomTokens(tokenizer))
    assert tiny_module.model.training  # back in train mode
    out = tmp_path / "run" / "generations"
    assert sorted(p.name for p in out.iterdir()) == [
        "dollyeval_seed1_step2.jsonl",
        "dollyeval_seed2_step2.jsonl",
        "rougeL_step2.json",
        "sni_seed1_step2.jsonl",
        "sni_seed2_step2.jsonl",
    ]
    rows = [json.loads(line) for line in (out / "dollyeval_seed1_step2.jsonl").read_text().splitlines()]
    assert [r["references"] for r in rows] == [["the court"], ["law document"]]  # limit=2
    assert rows[1]["prompt"] == alpaca_prompt("Copy.", "law document")
    rescored = rouge_l_scores([r["generation"] for r in rows], [r["references"] for r in rows])
    assert [r["rougeL"] for r in rows] == pytest.approx([100 * s for s in rescored])
    summary = json.loads((out / "rougeL_step2.json").read_text())
    dolly = summary["sets"]["dollyeval"]
    lines = {k: (out / f"dollyeval_seed{k}_step2.jsonl").read_text().splitlines() for k in (1, 2)}
    runs = [statistics.fmean(json.loads(x)["rougeL"] for x in lines[k]) for k in (1, 2)]
    assert list(dolly["runs"].values()) == pytest.approx(runs)
    assert dolly["mean"] == pytest.approx(statistics.fmean(runs))
    assert dolly["std"] == pytest.approx(statistics.stdev(runs))  # sample standard deviation over seeds
    assert summary["settings"]["seeds"] == [1, 2] and summary["settings"]["no_repeat_ngram_size"] == 6
    logged = (tmp_path / "run" / "metrics.csv").read_text()
    assert "rougeL/dollyeval" in logged and "rougeL/sni_std" in logged
    assert callback.last_summary == summary


def test_validation_mode_logs_every_n_validations(tmp_path, eval_root, tiny_module, tokenizer):
    callback = _callback(eval_root, when="validation", every_n_validations=2, greedy=True, sets=["sni"])
    trainer = _trainer(tmp_path, callback, max_steps=4, val_check_interval=1, num_sanity_val_steps=1)
    trainer.fit(tiny_module, datamodule=_RandomTokens(tokenizer))
    names = sorted(p.name for p in (tmp_path / "run" / "generations").iterdir())
    assert names == ["rougeL_step2.json", "rougeL_step4.json", "sni_greedy_step2.jsonl", "sni_greedy_step4.jsonl"]
    assert "rougeL/sni" in trainer.callback_metrics  # available to ModelCheckpoint(monitor=...)
    sni = callback.last_summary["sets"]["sni"]
    assert list(sni["runs"]) == ["greedy"] and sni["std"] == 0.0


def test_sampling_is_reproducible_and_leaves_the_rng_alone(tmp_path, eval_root, tiny_module, tokenizer):
    callback = _callback(eval_root, sets=["dollyeval"], seeds=[3])
    state = torch.get_rng_state()
    first = callback.evaluate(tiny_module, tokenizer, tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), state)
    second = callback.evaluate(tiny_module, tokenizer, tmp_path / "b")
    assert first == second
    assert (tmp_path / "a" / "dollyeval_seed3_step0.jsonl").read_text() == (
        tmp_path / "b" / "dollyeval_seed3_step0.jsonl"
    ).read_text()
    # The Hugging Face model itself (which has a `.model` too, its decoder stack) is evaluated as it is.
    assert callback.evaluate(tiny_module.model, tokenizer, tmp_path / "c") == first


def test_missing_sets_are_named(tmp_path, eval_root, tiny_module, tokenizer):
    callback = _callback(eval_root, sets=["dollyeval", "nope"], split="eval_final")
    with pytest.raises(FileNotFoundError, match=r"dollyeval: .*eval_final.*; nope"):
        callback.evaluate(tiny_module, tokenizer, tmp_path)
    with pytest.raises(ValueError, match="when must be"):
        RougeLCallback(when="test")
