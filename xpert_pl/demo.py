"""`xpert demo`: the whole XPERT experiment at CPU scale, every stage cached so a second run reuses it.

tokenizer -> source MoE pre-training -> expert analysis -> knowledge bank -> two students (scratch, XPERT) with the
same seed, data order and step budget -> report.md with the selection, loss curves and final numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from xpert_pl.paths import data_root as resolve_data_root

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
METHODS = {"scratch": "xpert_pl.initializers.ScratchInit", "xpert": "xpert_pl.initializers.XpertInit"}


class _Stages:
    """Runs the demo's stages in order; a stage whose output marker exists is skipped (cached) and timed as 0."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cached: list[str] = []

    def run(self, name: str, done_marker: Path, fn: Callable[[], None]) -> None:
        if done_marker.exists():
            log.info("[demo] %s: cached (%s)", name, done_marker)
            self.cached.append(name)
            self.seconds[name] = 0.0
            return
        log.info("[demo] %s ...", name)
        start = time.perf_counter()
        fn()
        self.seconds[name] = time.perf_counter() - start
        log.info("[demo] %s done in %.1f s", name, self.seconds[name])


def _fit(config: Path, run_dir: Path, data_args: list[str], extra: list[str]) -> None:
    from xpert_pl.cli import run_lightning_cli

    run_lightning_cli(
        ["fit", "--config", str(config), *data_args, f"--trainer.logger.init_args.save_dir={run_dir}", *extra]
    )


def _validation_interval(steps: int, points: int = 6) -> int:
    """The largest divisor of `steps` giving at least `points` validations, so the last step is validated."""
    return max(d for d in range(1, max(1, steps // points) + 1) if steps % d == 0)


def _command(name: str, config: Path, args: list[str]) -> None:
    from xpert_pl.cli import main

    main([name, "--config", str(config), *args])


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
        tokenizer_vocab_size: size of the byte-level BPE vocabulary trained on the corpus.
        config_dir: directory with `{source,pretrain,analyze,extract}/tiny.yaml` (default: the repo's configs/).
    """
    from xpert_pl.demo_report import write_demo_report

    start = time.perf_counter()
    out, configs = Path(out_dir), Path(config_dir) if config_dir else CONFIG_DIR
    source_hf, bank = out / "source" / "hf", out / "bank"
    data = {
        "data_root": resolve_data_root(data_root),
        "tokenizer": out / "tokenizer",
        "cache_dir": out / "cache",
        "max_docs_per_domain": max_docs_per_domain,
        "tokenizer_vocab_size": tokenizer_vocab_size,
    }
    data = {k: "null" if v is None else v for k, v in data.items()}
    fit_data = [f"--data.init_args.{k}={v}" for k, v in data.items()]
    stages = _Stages()
    stages.run(
        "source MoE",
        source_hf / "config.json",
        lambda: _fit(
            configs / "source" / "tiny.yaml",
            out / "source",
            fit_data,
            [
                f"--trainer.max_steps={source_steps}",
                f"--trainer.val_check_interval={_validation_interval(source_steps)}",
            ],
        ),
    )
    stages.run(
        "analysis",
        out / "analysis" / "selection.json",
        lambda: _command(
            "analyze",
            configs / "analyze" / "tiny.yaml",
            [f"--model={source_hf}", f"--out_dir={out / 'analysis'}", *[f"--data.{k}={v}" for k, v in data.items()]],
        ),
    )
    stages.run(
        "knowledge bank",
        bank / "manifest.json",
        lambda: _command(
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
            f"--trainer.val_check_interval={_validation_interval(student_steps)}",
            f"--model.initializer.class_path={class_path}",
            *([f"--model.initializer.init_args.bank={bank}"] if method == "xpert" else []),
        ]
        stages.run(
            f"student {method}",
            run_dir / "hf" / "config.json",
            lambda run_dir=run_dir, args=method_args: _fit(configs / "pretrain" / "tiny.yaml", run_dir, fit_data, args),
        )
    report = write_demo_report(out, list(METHODS), seed, stages.seconds, stages.cached, time.perf_counter() - start)
    log.info("[demo] done in %.1f s; report: %s", time.perf_counter() - start, report)
    return report
