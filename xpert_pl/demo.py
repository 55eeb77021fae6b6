"""`xpert demo`: the whole XPERT experiment at CPU scale, every stage cached so a second run reuses it.

tokenizer -> source MoE pre-training -> expert analysis -> knowledge bank -> two students (scratch, XPERT) with the
same seed, data order and step budget -> report.md with the selection, loss curves and final numbers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from xpert_pl.paths import data_root as resolve_data_root

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
METHODS = {"scratch": "xpert_pl.initializers.ScratchInit", "xpert": "xpert_pl.initializers.XpertInit"}


def _stage(name: str, done_marker: Path, timings: dict[str, float]) -> bool:
    """Log the stage; True when it must run (its output marker is missing)."""
    if done_marker.exists():
        log.info("[demo] %s: cached (%s)", name, done_marker)
        timings[name] = 0.0
        return False
    log.info("[demo] %s ...", name)
    return True


def _fit(config: Path, run_dir: Path, data_args: list[str], extra: list[str]) -> None:
    from xpert_pl.cli import run_lightning_cli

    args = ["fit", "--config", str(config), *data_args, f"--trainer.logger.init_args.save_dir={run_dir}", *extra]
    run_lightning_cli(args)


def demo(
    out_dir: str = "runs/demo",
    data_root: str | None = None,
    seed: int = 0,
    source_steps: int = 400,
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
    root = str(resolve_data_root(data_root))
    data_args = [
        f"--data.init_args.data_root={root}",
        f"--data.init_args.tokenizer={out / 'tokenizer'}",
        f"--data.init_args.cache_dir={out / 'cache'}",
        f"--data.init_args.max_docs_per_domain={max_docs_per_domain}",
        f"--data.init_args.tokenizer_vocab_size={tokenizer_vocab_size}",
    ]
    timings: dict[str, float] = {}
    _timed(timings, "source", lambda: _train_source(out, configs, data_args, source_steps, timings))
    _timed(timings, "analysis", lambda: _analyse(out, configs, data_args, timings))
    _timed(timings, "bank", lambda: _extract(out, configs, timings))
    for method, class_path in METHODS.items():
        _timed(
            timings,
            f"student_{method}",
            lambda m=method, c=class_path: _train_student(out, configs, data_args, m, c, seed, student_steps, timings),
        )
    report = write_demo_report(out, list(METHODS), seed, timings, time.perf_counter() - start)
    log.info("[demo] done in %.1f s; report: %s", time.perf_counter() - start, report)
    return report


def _timed(timings: dict[str, float], name: str, fn) -> None:
    start = time.perf_counter()
    fn()
    timings.setdefault(name, time.perf_counter() - start)


def _train_source(out: Path, configs: Path, data_args: list[str], steps: int, timings: dict[str, float]) -> None:
    run_dir = out / "source"
    if _stage("source MoE", run_dir / "hf" / "config.json", timings):
        _fit(configs / "source" / "tiny.yaml", run_dir, data_args, [f"--trainer.max_steps={steps}"])


def _train_student(
    out: Path,
    configs: Path,
    data_args: list[str],
    method: str,
    class_path: str,
    seed: int,
    steps: int,
    timings: dict[str, float],
) -> None:
    run_dir = out / "students" / method / f"seed{seed}"
    if not _stage(f"student {method}", run_dir / "hf" / "config.json", timings):
        return
    bank_arg = [f"--model.initializer.init_args.bank={out / 'bank'}"] if method == "xpert" else []
    _fit(
        configs / "pretrain" / "tiny.yaml",
        run_dir,
        data_args,
        [
            f"--seed_everything={seed}",
            f"--trainer.max_steps={steps}",
            f"--model.initializer.class_path={class_path}",
            *bank_arg,
        ],
    )


def _analyse(out: Path, configs: Path, data_args: list[str], timings: dict[str, float]) -> None:
    from xpert_pl.cli import main

    if _stage("analysis", out / "analysis" / "selection.json", timings):
        main(
            [
                "analyze",
                "--config",
                str(configs / "analyze" / "tiny.yaml"),
                f"--model={out / 'source' / 'hf'}",
                f"--out_dir={out / 'analysis'}",
                *[a.replace("--data.init_args.", "--data.") for a in data_args],
            ]
        )


def _extract(out: Path, configs: Path, timings: dict[str, float]) -> None:
    from xpert_pl.cli import main

    if _stage("knowledge bank", out / "bank" / "manifest.json", timings):
        main(
            [
                "extract",
                "--config",
                str(configs / "extract" / "tiny.yaml"),
                f"--model={out / 'source' / 'hf'}",
                f"--selection={out / 'analysis' / 'selection.json'}",
                f"--out_dir={out / 'bank'}",
            ]
        )
