"""The pipeline as plain Python calls (no command line): fit returns what it wrote, keeps `xpert fit`'s run-folder
guard, and evaluate scores an exported model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

# Lightning imported at collection: its log handler binds to pytest's capture, not to one test's capsys stream.
import xpert_pl.training.lightning_cli  # noqa: F401
from xpert_pl import pipeline
from xpert_pl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def tiny_overrides(data_root: Path, tokenizer: Path, tmp_path: Path) -> dict[str, object]:
    return {
        "data.init_args.data_root": str(data_root),
        "data.init_args.tokenizer": str(tokenizer),
        "data.init_args.cache_dir": str(tmp_path / "cache"),
        "data.init_args.block_size": 32,
        "data.init_args.batch_size": 4,
        "data.init_args.max_val_blocks_per_domain": 2,
        "trainer.max_steps": 2,
        "trainer.val_check_interval": 2,
    }


@pytest.fixture(scope="module")
def xpert_student(tiny_data_root, tiny_tokenizer_dir, tiny_bank, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    overrides = {
        **tiny_overrides(tiny_data_root, tiny_tokenizer_dir, tmp),
        "model.initializer.init_args.bank": str(tiny_bank),
    }
    configs = [REPO / "configs" / "pretrain" / "tiny.yaml", REPO / "configs" / "methods" / "xpert.yaml"]
    return pipeline.fit(configs, tmp / "xpert", overrides), configs, overrides


def test_fit_returns_the_run_it_wrote(xpert_student):
    result, _, _ = xpert_student
    assert isinstance(result, pipeline.FitResult)
    assert (result.hf_dir / "config.json").is_file() and result.last_checkpoint.name == "last.ckpt"
    assert set(result.final_metrics) >= {"val/loss", "val/loss/code", "val/loss/law", "val/loss/news"}
    assert math.isfinite(result.final_metrics["val/loss"]) and 0 < result.final_metrics["val/loss"] < 10
    init = json.loads((result.run_dir / "init_report.json").read_text())
    assert init["initializer"] == "xpert"


def test_the_saved_config_runs_again_as_it_is(xpert_student, tmp_path):
    """config.yaml records every option (no unserialisable default such as the checkpoint plugin instance), so the
    exact configuration a report shows is one `xpert fit --config` accepts; checkpoints stay atomic."""
    from xpert_pl.training.checkpointing import AtomicCheckpointIO
    from xpert_pl.training.lightning_cli import run_lightning_cli

    result = xpert_student[0]
    saved = (result.run_dir / "config.yaml").read_text()
    assert "Unable to serialize" not in saved
    config = yaml.safe_load(saved)
    assert config["trainer"]["plugins"] is None
    again = pipeline.fit(config, tmp_path / "again")  # the saved file, as it is, trains the same run again
    assert again.final_metrics["val/loss"] == pytest.approx(result.final_metrics["val/loss"], rel=1e-5)
    trainer_only = {k: v for k, v in config.items() if k not in ("ckpt_path", "weights_only")}  # fit's own options
    built = run_lightning_cli({"fit": trainer_only}, run=False)
    assert isinstance(built.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_fit_keeps_the_run_folder_guard(xpert_student):
    result, configs, overrides = xpert_student
    with pytest.raises(ConfigError, match="already holds a run"):
        pipeline.fit(configs, result.run_dir, overrides)


def test_evaluate_scores_rouge_on_an_exported_model(xpert_student, tmp_path):
    result = xpert_student[0]
    rows = [{"instruction": f"Say {w}.", "input": "", "output": w} for w in ("yes", "no", "maybe")]
    folder = tmp_path / "eval" / "tiny_set"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = pipeline.evaluate(result.hf_dir, rouge_sets=["tiny_set"], data_root=tmp_path, rouge_seeds=[1])
    assert scores.lm_eval is None and scores.settings["model_dir"] == str(result.hf_dir)
    assert any(k.endswith("tiny_set") for k in scores.rouge) and all(0 <= v <= 100 for v in scores.rouge.values())
