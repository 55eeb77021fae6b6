"""`xpert demo`: the whole XPERT experiment at CPU scale, every stage cached so a second run reuses it.

tokenizer -> source MoE pre-training -> expert analysis -> knowledge bank -> two students (scratch, XPERT) with the
same seed, data order and step budget -> report.md with the selection, loss curves and final numbers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from xpert_pl.experiments.stages import CachedStages, command_in_process, fit_in_process, validation_interval
from xpert_pl.paths import config_dir as shipped_config_dir
from xpert_pl.paths import data_root as resolve_data_root

log = logging.getLogger(__name__)

CONFIG_DIR = shipped_config_dir()
METHODS = {"scratch": "xpert_pl.initializers.ScratchInit", "xpert": "xpert_pl.initializers.XpertInit"}


def demo(
    out_dir: str = "runs/demo",
    data_root: str | None = None,
    seed: int = 0,
    source_steps: int = 800,
    student_steps: int = 300,
    max_docs_per_domain: int | None = 300,
    tokenizer_vocab_size: int = 4096,
    config_dir: str | None = None,
) -> Path:
    """Run the whole pipeline on the embedded default data and write `<out_dir>/report.md`.

    Args:
        out_dir: run directory; every stage writes a sub-directory and is skipped when it is already complete.
        data_root: data root (default: $XPERT_DATA_ROOT, else ../shared/data).
        seed: seed of both students (same initial scratch weights outside the FFN, same data order).
        source_steps: optimizer steps of the source MoE.
        student_steps: optimizer steps of each student.
        max_docs_per_domain: cap on documents per domain, to keep tokenisation short on a CPU.
        tokenizer_vocab_size: size of the byte-level BPE vocabulary trained on the corpus (the first stage).
        config_dir: directory with `{source,pretrain,analyze,extract}/tiny.yaml` (default: the shipped configs,
            listed by `xpert configs`).
    """
    from xpert_pl.demo_report import write_demo_report
    from xpert_pl.tokenizer import META_FILE
    from xpert_pl.tokenizer_training import train_tokenizer

    start = time.perf_counter()
    out, configs = Path(out_dir), Path(config_dir) if config_dir else CONFIG_DIR
    source_hf, bank = out / "source" / "hf", out / "bank"
    data = {
        "data_root": resolve_data_root(data_root),
        "tokenizer": out / "tokenizer",
        "cache_dir": out / "cache",
        "max_docs_per_domain": max_docs_per_domain,
    }
    data = {k: "null" if v is None else v for k, v in data.items()}
    fit_data = [f"--data.init_args.{k}={v}" for k, v in data.items()]
    stages = CachedStages("demo")
    stages.run(
        "tokenizer",
        data["tokenizer"] / META_FILE,
        lambda: train_tokenizer(data["tokenizer"], str(data["data_root"]), vocab_size=tokenizer_vocab_size),
    )
    stages.run(
        "source MoE",
        source_hf / "config.json",
        lambda: fit_in_process(
            configs / "source" / "tiny.yaml",
            out / "source",
            fit_data,
            [
                f"--trainer.max_steps={source_steps}",
                f"--trainer.val_check_interval={validation_interval(source_steps)}",
            ],
        ),
    )
    stages.run(
        "analysis",
        out / "analysis" / "selection.json",
        lambda: command_in_process(
            "analyze",
            configs / "analyze" / "tiny.yaml",
            [f"--model={source_hf}", f"--out_dir={out / 'analysis'}", *[f"--data.{k}={v}" for k, v in data.items()]],
        ),
    )
    stages.run(
        "knowledge bank",
        bank / "manifest.json",
        lambda: command_in_process(
            "extract",
            configs / "extract" / "tiny.yaml",
            [f"--model={source_hf}", f"--selection={out / 'analysis' / 'selection.json'}", f"--out_dir={bank}"],
        ),
    )
    for method, class_path in METHODS.items():
        run_dir = out / "students" / method / f"seed{seed}"
        method_args = [
            f"--seed_everything={seed}",
            f"--trainer.max_steps={student_steps}",
            f"--trainer.val_check_interval={validation_interval(student_steps)}",
            f"--model.initializer.class_path={class_path}",
            *([f"--model.initializer.init_args.bank={bank}"] if method == "xpert" else []),
        ]
        stages.run(
            f"student {method}",
            run_dir / "hf" / "config.json",
            lambda run_dir=run_dir, args=method_args: fit_in_process(
                configs / "pretrain" / "tiny.yaml", run_dir, fit_data, args
            ),
        )
    report = write_demo_report(out, list(METHODS), seed, stages.seconds, stages.cached, time.perf_counter() - start)
    log.info("[demo] done in %.1f s; report: %s", time.perf_counter() - start, report)
    return report
