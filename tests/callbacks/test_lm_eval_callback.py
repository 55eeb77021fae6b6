"""LMEvalCallback: the live model under a real Trainer, checked against lm-eval's `simple_evaluate` run directly."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from xpert_pl.callbacks import LMEvalCallback
from xpert_pl.evaluation import STANDARD_TASKS, TASKS_DIR, evaluate_lm
from xpert_pl.models import DenseStudent
from xpert_pl.tokenizer import load_tokenizer
from xpert_pl.training import CausalLMModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
from lm_eval_rows import MMLU_SUBJECTS, write_data_root

TASKS = [*STANDARD_TASKS, "medmcqa", "casehold"]
SEEDS = {"random_seed": 0, "numpy_random_seed": 0, "torch_random_seed": 0, "fewshot_random_seed": 0}
SUBJECTS = sorted(p.stem.removeprefix("mmlu_") for p in (TASKS_DIR / "mmlu").glob("mmlu_*.yaml"))


class _TokenData(L.LightningDataModule):
    """Random token batches, and the `tokenizer` attribute the callback reads."""

    def __init__(self, tokenizer, data_root: Path):
        super().__init__()
        self.tokenizer = tokenizer
        self.save_hyperparameters({"data_root": str(data_root)})
        gen = torch.Generator().manual_seed(0)
        self.batches = [{"input_ids": torch.randint(0, len(tokenizer), (2, 16), generator=gen)} for _ in range(2)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.batches[:1], batch_size=None)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """On the shared 2-core machine two OpenMP threads competing with other processes made these tiny forwards
    50x slower (1 s instead of 20 ms a batch); one thread changes no result, only the time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    """A data root with 24 rows per task (MMLU: 24 in two subjects, 1 in each other), no CaseHOLD."""
    return write_data_root(tmp_path_factory.mktemp("eval_root"), SUBJECTS)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def _module(tokenizer) -> CausalLMModule:
    torch.manual_seed(0)
    overrides = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}
    module = CausalLMModule(DenseStudent("llama-tiny", overrides), vocab_size=len(tokenizer), warmup_steps=1)
    module.configure_model()
    return module


def _trainer(tmp_path: Path, callback: LMEvalCallback, max_steps: int = 2) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _direct(model, tokenizer, root: Path, tasks: list[str], limit: int) -> dict:
    """lm-eval run by hand on the same model and the same shipped YAMLs and files."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_root": str(root), "split": "eval"}
    )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    return lm_eval.simple_evaluate(lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=False, **SEEDS)


def test_callback_at_fit_end_matches_simple_evaluate(tmp_path, eval_root, tokenizer):
    callback = LMEvalCallback(tasks=TASKS, limit=20, batch_size=8, when="fit_end")  # data root: the data module's
    module = _module(tokenizer)
    trainer = _trainer(tmp_path, callback)
    trainer.fit(module, datamodule=_TokenData(tokenizer, eval_root))
    assert module.model.training  # evaluated in eval mode, handed back in train mode

    summary = callback.last_summary
    written = json.loads((Path(trainer.log_dir) / "lm_eval" / "lm_eval_step2.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert list(summary["tasks"]) == TASKS[:-1]
    assert "casehold/test.jsonl does not exist" in summary["skipped"]["casehold"]

    direct = _direct(module.model, tokenizer, eval_root, TASKS[:-1], limit=20)
    for task, entry in summary["tasks"].items():
        expected = direct["results"][task]
        assert entry["metrics"], task
        for metric, value in entry["metrics"].items():
            assert 0.0 <= value <= 1.0
            assert value == pytest.approx(expected[f"{metric},none"], abs=1e-9), (task, metric)
            stderr = expected[f"{metric}_stderr,none"]  # "N/A" where lm-eval has none (MMLU, 1-row subjects)
            assert entry["stderr"][metric] == (pytest.approx(stderr, abs=1e-9) if stderr != "N/A" else None)
        assert entry["score"] == entry["metrics"][entry["metric"]]
        assert entry["version"] == direct["versions"][task]

    counts = {task: (entry["samples"], entry["samples_original"]) for task, entry in summary["tasks"].items()}
    one_row_subjects = len(SUBJECTS) - len(MMLU_SUBJECTS)
    mmlu = (20 * len(MMLU_SUBJECTS) + one_row_subjects, 24 * len(MMLU_SUBJECTS) + one_row_subjects)
    assert counts == {**dict.fromkeys(["boolq", "hellaswag", "piqa", "winogrande", "medmcqa"], (20, 24)), "mmlu": mmlu}
    assert summary["tasks"]["mmlu"]["num_fewshot"] == 5 and summary["tasks"]["boolq"]["num_fewshot"] == 0
    assert len(summary["tasks"]["mmlu"]["subtasks"]) == 4 + 57
    assert summary["tasks"]["mmlu"]["subtasks"]["mmlu_anatomy"]["samples"] == 20
    assert summary["step"] == 2
    assert summary["settings"]["seeds"] == SEEDS and summary["settings"]["limit"] == 20
    assert summary["settings"]["data_root"] == str(eval_root.resolve())

    with open(Path(trainer.log_dir) / "metrics.csv") as fh:
        logged = [row for row in csv.DictReader(fh) if row.get("eval/boolq/acc")]
    assert float(logged[-1]["eval/boolq/acc"]) == pytest.approx(summary["tasks"]["boolq"]["metrics"]["acc"])
    assert float(logged[-1]["eval/hellaswag/acc_norm"]) == pytest.approx(summary["tasks"]["hellaswag"]["score"])


def test_callback_after_validation_logs_through_the_module(tmp_path, eval_root, tokenizer):
    callback = LMEvalCallback(tasks=["boolq"], limit=4, batch_size=4, data_root=str(eval_root), when="validation")
    trainer = _trainer(tmp_path, callback)
    trainer.fit(_module(tokenizer), datamodule=_TokenData(tokenizer, eval_root))
    acc = callback.last_summary["tasks"]["boolq"]["metrics"]["acc"]
    assert trainer.callback_metrics["eval/boolq/acc"].item() == pytest.approx(acc)
    assert acc in {0.0, 0.25, 0.5, 0.75, 1.0}
    assert callback.state_dict() == {"validations": 1}


def test_mode_and_random_state_are_restored_also_on_error(eval_root, tokenizer, monkeypatch):
    import lm_eval

    model = _module(tokenizer).model
    model.eval()
    random.seed(123)
    expected_next = random.Random(123).random()
    evaluate_lm(model, tokenizer, tasks=["boolq"], limit=2, batch_size=2, data_root=eval_root)
    assert not model.training  # an eval-mode model stays in eval mode
    assert random.random() == expected_next  # simple_evaluate reseeded python's RNG; we put it back

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(lm_eval, "simple_evaluate", fail)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_lm(model, tokenizer, tasks=["boolq"], limit=2, batch_size=2, data_root=eval_root)
    assert model.training


def test_bad_settings_fail_at_construction_with_the_valid_names():
    with pytest.raises(ValueError, match="valid: boolq, hellaswag, mmlu, piqa, winogrande, medmcqa, casehold"):
        LMEvalCallback(tasks=["boolq", "arc_easy"])
    with pytest.raises(ValueError, match="split must be one of"):
        LMEvalCallback(split="test")
    with pytest.raises(ValueError, match="every_n_validations must be >= 1; limit must be None or >= 1"):
        LMEvalCallback(every_n_validations=0, limit=0)
