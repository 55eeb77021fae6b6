"""Every configs/sft/*.yaml parses and builds on a tiny data root; the Dolly one warm-starts and runs end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from xpert_pl.callbacks import LMEvalCallback, RougeLCallback
from xpert_pl.cli import run_lightning_cli
from xpert_pl.data.prompts import alpaca_prompt
from xpert_pl.evaluation import DIALOGUE_SETS

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sft"
SFT_YAMLS = sorted(CONFIGS.glob("*.yaml"))
VALIDATION_SETS = {"dolly.yaml": ["dolly_dev"], "superni.yaml": ["superni_val"]}
WORDS = ["court", "statute", "appeal", "judge", "ruling", "section"]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _dolly_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        rows.append({"instruction": "Repeat.", "context": words if i % 2 else "", "response": words, "category": None})
    return rows


def _superni_task(n: int, definition: str) -> dict:
    instances = [{"id": str(i), "input": f"{WORDS[i % 6]} {i}", "output": [WORDS[i % 6]]} for i in range(n)]
    return {"Definition": [definition], "Positive Examples": [], "Instances": instances}


@pytest.fixture(scope="module")
def sft_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root laid out like shared/data: sft/dolly, sft/superni and the five dialogue sets under eval/."""
    root = tmp_path_factory.mktemp("sft_root")
    rng = random.Random(0)
    _jsonl(root / "sft/dolly/train.jsonl", _dolly_rows(64, rng))
    _jsonl(root / "sft/dolly/dev.jsonl", _dolly_rows(8, rng))
    for name in ("dollyeval", "selfinst", "vicunaeval", "sni", "unni"):
        rows = [{"instruction": "Repeat.", "input": w, "output": [w] if name == "sni" else w} for w in WORDS[:2]]
        _jsonl(
            root / "eval" / name / "test.jsonl", [{**r, "prompt": alpaca_prompt("Repeat.", r["input"])} for r in rows]
        )
    base = root / "sft/superni"
    (base / "splits/default").mkdir(parents=True)
    (base / "splits/default/train_tasks.txt").write_text("task1_repeat\ntask664_mmmlu_answer_generation_x\n")
    (base / "splits/default/test_tasks.txt").write_text("task2_name\n")
    for rel, task in {
        "tasks/train/task1_repeat.json": _superni_task(30, "Repeat the word."),
        "tasks/train/task664_mmmlu_answer_generation_x.json": _superni_task(10, "Answer."),
        "tasks/test/task2_name.json": _superni_task(6, "Name the word."),
    }.items():
        _jsonl(base / rel, [task])
    return root


def _args(config: Path, root: Path, tokenizer: Path, run_dir: Path) -> list[str]:
    return [
        "fit",
        "--config",
        str(config),
        f"--data.init_args.data_root={root}",
        f"--data.init_args.tokenizer={tokenizer}",
        "--data.init_args.num_workers=0",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.precision=32-true",
        f"--trainer.logger.init_args.save_dir={run_dir}",
    ]


@pytest.mark.parametrize("config", SFT_YAMLS, ids=lambda p: p.name)
def test_sft_configs_build(config, sft_data_root, tiny_tokenizer, tmp_path):
    assert config.read_text().startswith("# xpert fit --config configs/sft/")
    cli = run_lightning_cli(_args(config, sft_data_root, tiny_tokenizer, tmp_path / "run"), run=False)
    cli.model.configure_model()
    dm = cli.datamodule
    assert cli.model.hparams.vocab_size == dm.vocab_size == len(dm.tokenizer)
    assert cli.model.val_domains == dm.domain_names == VALIDATION_SETS[config.name]
    (rouge,) = [c for c in cli.trainer.callbacks if isinstance(c, RougeLCallback)]
    assert rouge.when == "fit_end" and rouge.limit and rouge.split == "eval"
    (lm_eval,) = [c for c in cli.trainer.callbacks if isinstance(c, LMEvalCallback)]
    assert lm_eval.when == "fit_end" and lm_eval.limit == 50 and lm_eval.split == "eval"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss, n_tokens, _ = cli.model._losses(batch)
    assert n_tokens.item() == int((batch["labels"][:, 1:] != -100).sum()) > 0 and loss.item() > 0
    spec = yaml.safe_load(config.read_text())["data"]["init_args"]["source"]
    assert type(dm.source).__name__ == spec["class_path"].rsplit(".", 1)[1]


# Each evaluation overlay: (lm-eval documents per task, split, Rouge-L sets, prompts per set, sampling seeds).
OVERLAYS = {
    "bench.yaml": (50, "eval", list(DIALOGUE_SETS), 16, [10, 20]),  # the small bench: limited, development split
    "final.yaml": (None, "eval_final", ["dollyeval"], None, [10, 20, 30]),  # the reference bench's final numbers
}


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_evaluation_overlays_replace_the_callbacks(name, sft_data_root, tiny_tokenizer, tmp_path):
    overlay = CONFIGS / "eval" / name
    assert overlay.read_text().startswith("# xpert fit --config configs/sft/dolly.yaml --config configs/sft/eval/")
    args = _args(CONFIGS / "dolly.yaml", sft_data_root, tiny_tokenizer, tmp_path / "run")
    cli = run_lightning_cli([*args[:3], "--config", str(overlay), *args[3:]], run=False)
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert names.count("LMEvalCallback") == 1 and names.count("RougeLCallback") == 1 and "HFExport" in names
    limit, split, sets, prompts, seeds = OVERLAYS[name]
    (lm_eval,) = [c for c in cli.trainer.callbacks if isinstance(c, LMEvalCallback)]
    assert lm_eval.tasks == ["boolq", "hellaswag", "piqa", "winogrande"] and lm_eval.limit == limit
    assert lm_eval.batch_size == 32 and lm_eval.split == split
    (rouge,) = [c for c in cli.trainer.callbacks if isinstance(c, RougeLCallback)]
    assert (rouge.sets, rouge.limit, rouge.seeds, rouge.split) == (sets, prompts, seeds, split)


def test_dolly_fine_tune_command_warm_starts_and_writes_rouge(sft_data_root, tiny_tokenizer, tmp_path):
    base = _args(CONFIGS / "dolly.yaml", sft_data_root, tiny_tokenizer, tmp_path / "pre")
    pretrained = run_lightning_cli(base, run=False)
    pretrained.model.configure_model()
    pretrained.model.model.save_pretrained(tmp_path / "pretrained_hf")
    # The shipped YAML with shorter generations, so the run takes seconds on CPU.
    config = yaml.safe_load((CONFIGS / "dolly.yaml").read_text())
    (rouge,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("RougeLCallback")]
    rouge["init_args"]["max_new_tokens"] = 8
    # lm-eval reads the five task files, which this tiny data root lacks; tests/evaluation covers that callback.
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"] if "LMEval" not in c["class_path"]]
    (tmp_path / "dolly.yaml").write_text(yaml.safe_dump(config))
    args = [
        *_args(tmp_path / "dolly.yaml", sft_data_root, tiny_tokenizer, tmp_path / "sft"),
        f"--model.init_checkpoint={tmp_path / 'pretrained_hf'}",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.enable_progress_bar=false",
    ]
    cli = run_lightning_cli(args)
    assert cli.model.init_report.initializer == "WarmStart"
    assert cli.trainer.global_step == 2 and cli.model.model.training
    generations = tmp_path / "sft" / "generations"
    assert len(list(generations.glob("*_seed10_step2.jsonl"))) == 5  # one per dialogue set
    summary = json.loads((generations / "rougeL_step2.json").read_text())
    assert sorted(summary["sets"]) == ["dollyeval", "selfinst", "sni", "unni", "vicunaeval"]
    assert summary["sets"]["sni"]["n"] == 2 and sorted(summary["sets"]["sni"]["runs"]) == ["seed10", "seed20"]
    assert (tmp_path / "sft" / "hf" / "config.json").is_file()
    metrics = (tmp_path / "sft" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"rougeL/dollyeval", "rougeL/dollyeval_std", "val/loss/dolly_dev"} <= set(metrics)
