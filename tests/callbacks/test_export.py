"""HFExport: a tiny fit's export loads with plain `transformers`, stops generating at EOS, and has a model card."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from xpert_pl.callbacks import HFExport
from xpert_pl.initializers import UntrainedSourceInit
from xpert_pl.models import DenseStudent, OlmoeSource
from xpert_pl.tokenizer import load_tokenizer
from xpert_pl.training import CausalLMModule

IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


class _TinyData(L.LightningDataModule):
    """Random-token batches, and the tokenizer a real data module carries (None: a run without one)."""

    def __init__(self, tokenizer, vocab_size: int):
        super().__init__()
        self.tokenizer = tokenizer
        gen = torch.Generator().manual_seed(0)
        self.batches = [{"input_ids": torch.randint(0, vocab_size, (2, 16), generator=gen)} for _ in range(2)]

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.batches[:1], batch_size=None)


def _fit_and_export(run_dir: Path, module: CausalLMModule, tokenizer, vocab_size: int) -> Path:
    """Two training steps and one validation on CPU with the real HFExport callback; the export's directory."""
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=L.pytorch.loggers.CSVLogger(run_dir, name="", version=""),
        callbacks=[HFExport()],
        enable_checkpointing=False,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=_TinyData(tokenizer, vocab_size))
    return run_dir / "hf"


@pytest.fixture(scope="module")
def student_export(tiny_untrained_bank, tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A llama-tiny student initialised from the untrained-source bank, trained two steps, exported."""
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    module = CausalLMModule(
        DenseStudent("llama-tiny"), UntrainedSourceInit(str(tiny_untrained_bank)), vocab_size=len(tokenizer)
    )
    return _fit_and_export(tmp_path_factory.mktemp("student"), module, tokenizer, len(tokenizer))


def _special_ids(directory: Path) -> dict[str, dict[str, int | None]]:
    return {
        name: {key: json.loads((directory / name).read_text()).get(key) for key in IDS}
        for name in ("config.json", "generation_config.json")
    }


def _eos_everywhere(model) -> None:
    """Make EOS the argmax at every position: a zero lm_head plus a bias on the EOS logit."""
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[model.generation_config.eos_token_id] = 10.0
    model.lm_head = head


def test_plain_transformers_generate_stops_at_the_tokenizers_eos(student_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student_export)
    model = AutoModelForCausalLM.from_pretrained(student_export)
    expected = {key: getattr(tokenizer, key) for key in IDS}
    assert expected == {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}  # the kit's tokenizer
    assert _special_ids(student_export) == {"config.json": expected, "generation_config.json": expected}

    _eos_everywhere(model)
    prompt = tokenizer("court shall", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 1 and out[0, -1].item() == tokenizer.eos_token_id
    # The LlamaConfig default (eos 2) the export used to carry would have run to max_new_tokens.
    model.generation_config.eos_token_id = 2
    assert model.generate(**prompt, max_new_tokens=8, do_sample=False).shape[1] == out.shape[1] - 1 + 8


def test_the_model_card_states_method_provenance_progress_and_command(student_export, tiny_untrained_bank):
    from huggingface_hub import ModelCard

    from xpert_pl.model_card import kit_version

    card = ModelCard.load(student_export / "README.md")
    facts = card.data.xpert
    report = json.loads((student_export.parent / "init_report.json").read_text())
    metrics = (student_export.parent / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    val_losses = [row.split(",")[header.index("val/loss")] for row in metrics[1:]]
    assert facts["method"] == report["initializer"] == "untrained_source"
    assert facts["bank"] == str(tiny_untrained_bank)
    assert facts["source"] == str(tiny_untrained_bank.parent / "hf")  # the untrained copy it was extracted from
    assert facts["source_method"] == "untrained copy (seed 1)"  # from the copy's own card
    assert facts["tokens_seen"] == 2 * 2 * 16
    assert facts["final_val_loss"] == pytest.approx(float([v for v in val_losses if v][-1]), rel=1e-6)
    assert facts["kit_version"] == kit_version() != ""
    assert facts["command"] == shlex.join(sys.argv)
    assert facts["architecture"] == "LlamaForCausalLM"
    assert facts["special_token_ids"] == {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    assert "untrained_source" in card.text and str(tiny_untrained_bank) in card.text
    assert not [p for p in student_export.parent.iterdir() if p.name.startswith(".hf.")], "temporary dir left"


def test_a_warm_started_runs_card_names_its_source_and_the_sources_method(student_export, tiny_tokenizer_dir, tmp_path):
    from huggingface_hub import ModelCard

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    module = CausalLMModule(DenseStudent("llama-tiny"), vocab_size=len(tokenizer), init_checkpoint=str(student_export))
    facts = ModelCard.load(_fit_and_export(tmp_path, module, tokenizer, len(tokenizer)) / "README.md").data.xpert
    assert (facts["method"], facts["source"], facts["source_method"]) == (
        "WarmStart",
        str(student_export),
        "untrained_source",
    )


def test_a_source_moe_export_carries_the_tokenizers_ids(tiny_tokenizer_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    module = CausalLMModule(OlmoeSource("olmoe-tiny"), vocab_size=len(tokenizer))
    export = _fit_and_export(tmp_path, module, tokenizer, len(tokenizer))
    expected = {key: getattr(tokenizer, key) for key in IDS}
    assert _special_ids(export) == {"config.json": expected, "generation_config.json": expected}
    from huggingface_hub import ModelCard

    facts = ModelCard.load(export / "README.md").data.xpert
    assert facts["method"] == "scratch" and facts["source"] is None and facts["bank"] is None


def test_without_a_tokenizer_the_ids_stay_and_the_log_says_so(tmp_path, caplog):
    module = CausalLMModule(DenseStudent("llama-tiny"), vocab_size=64)
    with caplog.at_level("WARNING", logger="xpert_pl.callbacks.export"):
        export = _fit_and_export(tmp_path, module, None, 64)
    defaults = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}  # LlamaConfig's, as built
    assert _special_ids(export)["config.json"] == defaults
    assert "no tokenizer" in caplog.text
    assert (export / "README.md").is_file() and not (export / "tokenizer.json").exists()
