"""The XPERT pipeline as typed Python functions, callable from a notebook with no command line involved:

    from xpert_pl import pipeline
    from xpert_pl.data import PretrainDataModule

    tok = pipeline.train_tokenizer("runs/tokenizer", vocab_size=4096)
    data = {"data.init_args.tokenizer": str(tok)}
    source = pipeline.fit(["configs/source/tiny.yaml"], "runs/source", data)
    analysis = pipeline.analyze(str(source.hf_dir), PretrainDataModule(tokenizer=str(tok)), out_dir="runs/analysis")
    bank = pipeline.extract(str(source.hf_dir), str(analysis.selection), out_dir="runs/bank")
    student = pipeline.fit(["configs/pretrain/tiny.yaml", "configs/methods/xpert.yaml"], "runs/student",
                           {**data, "model.initializer.init_args.bank": str(bank.out_dir)})
    sft = pipeline.fine_tune(["configs/sft/dolly.yaml"], student.hf_dir, "runs/sft", data)
    scores = pipeline.evaluate(sft.hf_dir, tasks=["boolq"], limit=50)
    pipeline.write_report("runs/bench-quick")

Each step returns what it wrote (paths) and its metrics; `xpert <command>` wraps the same functions, and
`xpert bench run` (`xpert_pl.experiments`) chains them over a matrix laid out by `RunLayout`. Steps are imported
on first use, so importing this package stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train_tokenizer": "xpert_pl.tokenizer_training",
    "fit": "xpert_pl.pipeline.training",
    "fine_tune": "xpert_pl.pipeline.training",
    "FitResult": "xpert_pl.pipeline.training",
    "analyze": "xpert_pl.pipeline.steps",
    "extract": "xpert_pl.pipeline.steps",
    "AnalysisResult": "xpert_pl.pipeline.steps",
    "BankResult": "xpert_pl.pipeline.steps",
    "make_untrained_copy": "xpert_pl.models",
    "evaluate": "xpert_pl.pipeline.evaluation",
    "EvaluationResult": "xpert_pl.pipeline.evaluation",
    "write_report": "xpert_pl.report",
    "RunLayout": "xpert_pl.layout",
    "load_config": "xpert_pl.pipeline.config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
