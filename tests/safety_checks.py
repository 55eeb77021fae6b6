"""Helpers of the bad-input tests: exit status 2, caught before expensive work, nothing changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRETRAIN = CONFIGS / "pretrain" / "tiny.yaml"


class ExpensiveWorkCalled(BaseException):
    """Raised by a spied loader: a BaseException, so the CLI cannot turn it into a clean exit status 2."""


# What "expensive work" means: tokenising, loading a model, counting routing, decomposing, building and training.
EXPENSIVE = {
    "tokenising": [
        "xpert_pl.data.pretrain.PretrainDataModule._packed",
        "xpert_pl.data.pretrain.PretrainDataModule._stream",
    ],
    "model loading": [
        "xpert_pl.pipeline.steps.load_causal_lm",
        "xpert_pl.analysis.loading.load_for_analysis",
        "transformers.AutoModelForCausalLM.from_pretrained",
        "transformers.AutoModelForCausalLM.from_config",
    ],
    "counting": ["xpert_pl.analysis.counter.count_activations"],
    "decomposing": ["xpert_pl.bank.tucker.TuckerConsolidator.decompose"],
    "model building": ["xpert_pl.training.module.CausalLMModule.configure_model"],
}


def forbid_expensive_work(monkeypatch) -> None:
    """Make every expensive step raise ExpensiveWorkCalled, so a test proves a refusal came before it."""

    def spy(what: str):
        def called(*args, **kwargs):
            raise ExpensiveWorkCalled(what)

        return called

    for what, targets in EXPENSIVE.items():
        for target in targets:
            monkeypatch.setattr(target, spy(what))


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and directory under `root` with a sha256 of each file's bytes."""
    digest = {}
    for path in sorted(Path(root).rglob("*")):
        relative = path.relative_to(root).as_posix()
        digest[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def refused(capsys, argv: list[str], *fragments: str) -> str:
    """Run `xpert <argv>`; assert exit status 2, every fragment in one message and no traceback; return stderr."""
    from xpert_pl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err[-3000:]
    assert "Traceback" not in err
    assert "Does not validate against any" not in err, "jsonargparse's report of the types it tried leaked out"
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    return err


def tiny_fit_args(config: Path, run_dir: Path, data_root: Path, tokenizer: Path, *extra: str) -> list[str]:
    """`xpert fit` arguments of a tiny student on the tiny corpus (blocks of 32, batches of 4) writing `run_dir`;
    the data cache sits beside the run folder."""
    return [
        "fit",
        "--config",
        str(config),
        f"--data.init_args.data_root={data_root}",
        f"--data.init_args.tokenizer={tokenizer}",
        f"--data.init_args.cache_dir={run_dir.parent / 'cache'}",
        "--data.init_args.block_size=32",
        "--data.init_args.batch_size=4",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        *extra,
    ]
