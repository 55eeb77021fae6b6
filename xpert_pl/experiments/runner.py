"""`xpert bench run <matrix>`: run what is missing of an experiment matrix, resuming what was interrupted.

Layout of `out_dir` (read by `xpert report`):
    matrix.yaml                          the matrix as given
    shared/{tokenizer,cache,source,analysis,bank}/   the source pipeline, run once (cached stages); no tokenizer/
                                          when the matrix's `data.tokenizer` names one
    cells/<scale>/<budget>/<method>/seed<k>/         one pre-training run each: cell.json (status, wall time,
                                          token budget), metrics.csv, config.yaml, init_report.json, hf/, checkpoints/;
                                          sft/ with the follow-up fine-tuning when the matrix asks for it
A cell whose cell.json says `done` is skipped; a cell with a `last.ckpt` but not done resumes from it. Each run is
a separate `xpert fit` process, so a crash or a kill loses at most the steps since the last checkpoint. The processes
are forked from a server that has imported the kit once (`run_forked`): on a 2-core VM a new interpreter spends
10-20 s importing Lightning and transformers, which every cell of a matrix would otherwise pay again.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from xpert_pl.artifacts import ARTIFACT_FILE, read_json, replace_problem, write_json
from xpert_pl.errors import raise_if_problems
from xpert_pl.experiments.matrix import Cell, ExperimentMatrix, load_matrix
from xpert_pl.experiments.stages import CachedStages, command_in_process, fit_in_process, validation_interval
from xpert_pl.paths import data_root as resolve_data_root
from xpert_pl.tokenizer import META_FILE
from xpert_pl.tokenizer_training import train_tokenizer

log = logging.getLogger(__name__)

Launcher = Callable[[list[str], Path], int]
CELL_FILE = "cell.json"
XPERT = [sys.executable, "-m", "xpert_pl.cli"]
# Imported once by the fork server, so each cell process starts with them loaded.
PRELOAD = [
    "xpert_pl.cli",
    "xpert_pl.training.lightning_cli",
    "xpert_pl.training",
    "xpert_pl.data",
    "xpert_pl.initializers",
    "xpert_pl.callbacks",
]


def artifact_overrides(method: Path, artifacts: dict[str, Path]) -> list[str]:
    """CLI overrides pointing every `runs/...` path of a method YAML's `model.*` init_args (nested too) at
    `artifacts[<argument name>]`, e.g. `bank`, `source`, `teacher`, `analysis`, `selection`."""
    overrides: list[str] = []

    def walk(spec: Any, prefix: str) -> None:
        for key, value in ((spec or {}).get("init_args") or {}).items():
            if isinstance(value, dict) and "class_path" in value:
                walk(value, f"{prefix}.init_args.{key}")
            elif isinstance(value, str) and value.startswith("runs/"):
                if key not in artifacts:
                    raise ValueError(f"{method.name}: no artifact for '{key}' (known: {', '.join(sorted(artifacts))})")
                overrides.append(f"{prefix}.init_args.{key}={artifacts[key]}")

    for part, spec in (yaml.safe_load(method.read_text()).get("model") or {}).items():
        walk(spec, f"--model.{part}")
    return overrides


def run_subprocess(command: list[str], log_file: Path) -> int:
    """Run `command`, its output appended to `log_file`; returns the exit status."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as fh:
        return subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode


def _xpert_in_child(argv: list[str], log_file: str) -> None:
    """Body of a forked cell process: stdout and stderr appended to `log_file`, then `xpert <argv>`."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    from xpert_pl.cli import main

    main(argv)


def run_forked(command: list[str], log_file: Path) -> int:
    """Like `run_subprocess`, but an `xpert` command runs in a process forked from a server that has already
    imported the kit (multiprocessing's forkserver: a clean process, never one that has trained or used threads).
    Exit status as a subprocess's: 0, the `SystemExit` code, 1 for an uncaught error, -N for signal N."""
    if command[: len(XPERT)] != XPERT:
        return run_subprocess(command, log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    process = context.Process(target=_xpert_in_child, args=(command[len(XPERT) :], str(log_file)))
    process.start()
    process.join()
    return process.exitcode


@dataclass
class MatrixRunner:
    """Runs an `ExperimentMatrix`: the shared source pipeline in this process, every cell as its own process.

    Attributes:
        matrix: the parsed matrix.
        jobs: cells run at the same time (each a separate `xpert fit` process).
        launch: runs one command and returns its exit status (`run_forked`; tests replace it).
    """

    matrix: ExperimentMatrix
    jobs: int = 1
    launch: Launcher = run_forked

    @property
    def shared(self) -> Path:
        return self.matrix.out_dir / "shared"

    def data_settings(self) -> dict[str, Any]:
        """Data-module settings every run shares: data root, tokenizer, cache, and the matrix's `data` block."""
        data = {"data_root": resolve_data_root(self.matrix.data.get("data_root"))}
        data |= {"tokenizer": self.shared / "tokenizer", "cache_dir": self.shared / "cache"}
        data |= {k: v for k, v in self.matrix.data.items() if k != "data_root"}
        return {k: "null" if v is None else v for k, v in data.items()}

    def artifacts(self) -> dict[str, Path]:
        source = self.matrix.source_hf or self.shared / "source" / "hf"
        analysis = self.shared / "analysis"
        return {
            "source": source,
            "teacher": source,
            "analysis": analysis,
            "selection": analysis / "selection.json",
            "bank": self.shared / "bank",
            "untrained_bank": self.shared / "untrained" / "bank",
        }

    def uses_artifact(self, key: str) -> bool:
        """Whether some method of the matrix points an argument named `key` at a `runs/...` artifact."""
        return any(
            f".{key}=" in arg for m in self.matrix.methods.values() for arg in artifact_overrides(m, self.artifacts())
        )

    def run_shared(self) -> dict[str, float]:
        """Tokenizer (unless `data.tokenizer` names one), source MoE (unless given), expert analysis and knowledge
        bank, each skipped once done; the same procedure on an untrained copy of the source when a method needs it
        (UntrainedSourceInit)."""
        stages, data, art = CachedStages("bench"), self.data_settings(), self.artifacts()
        if "tokenizer" not in self.matrix.data:
            tok = self.shared / "tokenizer"
            stages.run(
                "tokenizer",
                tok / META_FILE,
                lambda: train_tokenizer(tok, str(data["data_root"]), **self.matrix.tokenizer),
            )
        if self.matrix.source_hf is None:
            steps = self.matrix.source.steps
            extra = [f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={validation_interval(steps)}"]
            fit_data = [f"--data.init_args.{k}={v}" for k, v in data.items()]
            run = self.shared / "source"
            stages.run(
                "source MoE",
                art["source"] / "config.json",
                lambda: fit_in_process(self.matrix.source.config, run, fit_data, [*self.matrix.source.args, *extra]),
            )
        self._analysis_and_bank(stages, "", art["source"], self.shared)
        if self.uses_artifact("untrained_bank"):
            from xpert_pl.models import make_untrained_copy  # transformers' model classes: only when needed

            copy = self.shared / "untrained" / "hf"
            stages.run(
                "untrained copy", copy / "untrained.json", lambda: make_untrained_copy(str(art["source"]), str(copy))
            )
            self._analysis_and_bank(stages, "untrained ", copy, self.shared / "untrained")
        return stages.seconds

    def _analysis_and_bank(self, stages: CachedStages, label: str, model: Path, root: Path) -> None:
        """`xpert analyze` and `xpert extract` of `model` into `root/analysis` and `root/bank`."""
        analysis, bank, data = root / "analysis", root / "bank", self.data_settings()
        analyze_args = [f"--model={model}", f"--out_dir={analysis}", *self.matrix.analyze.args]
        analyze_args += [f"--data.{k}={v}" for k, v in data.items()]
        stages.run(
            f"{label}analysis",
            analysis / "selection.json",
            lambda: command_in_process("analyze", self.matrix.analyze.config, analyze_args),
        )
        extract_args = [f"--model={model}", f"--selection={analysis / 'selection.json'}", f"--out_dir={bank}"]
        stages.run(
            f"{label}knowledge bank",
            bank / "manifest.json",
            lambda: command_in_process(
                "extract", self.matrix.extract.config, [*extract_args, *self.matrix.extract.args]
            ),
        )

    def pretrain_command(self, cell: Cell) -> list[str]:
        """The `xpert fit` command of a cell (with `--ckpt_path` when it resumes)."""
        run_dir, scale = cell.directory(self.matrix.out_dir), self.matrix.scales[cell.scale]
        method = self.matrix.methods[cell.method]
        command = [*XPERT, "fit", "--config", str(scale.config), *scale.args]
        command += ["--config", str(method), *artifact_overrides(method, self.artifacts())]
        command += [f"--data.init_args.{k}={v}" for k, v in self.data_settings().items()]
        command += [
            f"--seed_everything={cell.seed}",
            f"--data.init_args.seed={cell.seed}",
            f"--trainer.max_steps={cell.steps}",
            f"--trainer.val_check_interval={validation_interval(cell.steps)}",
            f"--trainer.logger.init_args.save_dir={run_dir}",
        ]
        last = run_dir / "checkpoints" / "last.ckpt"
        # The cell owns its folder: a start that died before its first checkpoint is replaced, not mixed with.
        return [*command, f"--ckpt_path={last}"] if last.is_file() else [*command, "--overwrite=true"]

    def sft_command(self, cell: Cell) -> list[str]:
        """The follow-up fine-tuning of a cell: a warm start from its exported model."""
        sft, run_dir = self.matrix.sft.stage, cell.directory(self.matrix.out_dir)
        data = {k: v for k, v in self.data_settings().items() if k in ("data_root", "tokenizer")}
        return [
            *(*XPERT, "fit", "--config", str(sft.config), *sft.args),
            *[f"--data.init_args.{k}={v}" for k, v in data.items()],
            f"--model.init_checkpoint={run_dir / 'hf'}",
            f"--seed_everything={cell.seed}",
            f"--trainer.max_steps={sft.steps}",
            f"--trainer.logger.init_args.save_dir={run_dir / 'sft'}",
            "--overwrite=true",
        ]

    def run_cell(self, cell: Cell) -> str:
        """Run (or resume) one cell and its follow-up stages; returns its final status."""
        run_dir = cell.directory(self.matrix.out_dir)
        record = read_json(run_dir / CELL_FILE) if (run_dir / CELL_FILE).is_file() else {}
        if record.get("status") == "done":
            return "skipped"
        record = {**_describe(cell), "status": "running", "stage_wall_s": record.get("stage_wall_s", {})}
        write_json(run_dir / CELL_FILE, record)
        stages = [("pretrain", self.pretrain_command, run_dir / "hf" / "config.json")]
        if self.matrix.wants_sft(cell):
            stages.append(("sft", self.sft_command, run_dir / "sft" / "hf" / "config.json"))
        for name, build, marker in stages:
            if marker.is_file():
                continue
            start = time.perf_counter()
            status = self.launch(build(cell), run_dir / f"{name}.log")
            record["stage_wall_s"][name] = record["stage_wall_s"].get(name, 0.0) + time.perf_counter() - start
            if status != 0:
                write_json(run_dir / CELL_FILE, {**record, "status": "failed", "failed_stage": name})
                return "failed"
        record |= {"status": "done", "wall_s": sum(record["stage_wall_s"].values())}
        record["tokens_budget"] = _tokens_budget(run_dir, cell.steps)
        write_json(run_dir / CELL_FILE, record)
        return "done"

    def config_problems(self) -> list[str]:
        """Every cell's `xpert fit` configuration parsed and checked (nothing built or run), one problem per cell
        kind (scale x method, and its fine-tuning), so a typo surfaces before the shared stages start."""
        from xpert_pl.cli_errors import explain
        from xpert_pl.training.lightning_cli import run_lightning_cli

        problems, seen = [], set()
        for cell in self.matrix.cells():
            commands = [("pretrain", self.pretrain_command)]
            commands += [("sft", self.sft_command)] if self.matrix.wants_sft(cell) else []
            for stage, build in commands:
                if (cell.scale, cell.method, stage) in seen:
                    continue
                seen.add((cell.scale, cell.method, stage))
                argv = [a for a in build(cell)[len(XPERT) :] if not a.startswith("--ckpt_path")]
                try:
                    run_lightning_cli(argv, parse_only=True)
                except Exception as err:  # every parse or check failure is the user's to fix
                    message = explain(err, "fit", argv) or f"{type(err).__name__}: {err}"
                    problems.append(f"cell {cell.scale}/{cell.method} ({stage}): {message}")
        return problems

    def run(self, matrix_file: Path | None = None) -> dict[str, int]:
        """The shared stages, then every cell; returns how many cells ended in each status."""
        # A runs folder accumulates (reruns resume it): it must be one the kit made for a matrix, or new.
        problem = replace_problem(self.matrix.out_dir, "bench", "the matrix's out_dir")
        raise_if_problems([problem, *self.config_problems()] if problem else self.config_problems())
        self.matrix.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.matrix.out_dir / ARTIFACT_FILE, {"kind": "bench", "version": 1})
        if matrix_file is not None:
            shutil.copyfile(matrix_file, self.matrix.out_dir / "matrix.yaml")
        self.run_shared()
        cells = self.matrix.cells()
        counts: dict[str, int] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
            for status in tqdm(pool.map(self.run_cell, cells), total=len(cells), desc="cells", unit="cell"):
                counts[status] = counts.get(status, 0) + 1
        return counts


def _describe(cell: Cell) -> dict[str, Any]:
    return {"scale": cell.scale, "budget": cell.budget, "method": cell.method, "seed": cell.seed, "steps": cell.steps}


def _tokens_budget(run_dir: Path, steps: int) -> int | None:
    """Tokens a run was given: steps x batch size x block size (x devices), from its saved config."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return None
    config = yaml.safe_load(config_file.read_text())
    data = config.get("data", {}).get("init_args", {})
    devices = config.get("trainer", {}).get("devices", 1)
    devices = devices if isinstance(devices, int) and devices > 0 else 1
    if "block_size" not in data or "batch_size" not in data:
        return None
    return int(steps * data["batch_size"] * data["block_size"] * devices)


def bench_run(matrix: str, jobs: int = 1, only: Sequence[str] | None = None) -> None:
    """Run what is missing of an experiment matrix (finished cells are skipped, interrupted ones resumed).

    Args:
        matrix: the matrix YAML (e.g. `configs/bench/quick.yaml`).
        jobs: cells trained at the same time, each in its own process (on a 2-core CPU keep 1).
        only: run only the cells of these methods (the shared stages always run).
    """
    parsed = load_matrix(matrix)
    if only:
        unknown = [m for m in only if m not in parsed.methods]
        if unknown:
            raise ValueError(f"--only names unknown methods {unknown}; the matrix has {', '.join(parsed.methods)}")
        parsed.methods = {m: p for m, p in parsed.methods.items() if m in only}
    counts = MatrixRunner(parsed, jobs=jobs).run(Path(matrix))
    print(json.dumps({"out_dir": str(parsed.out_dir), **counts}))
    if counts.get("failed"):
        raise SystemExit(f"{counts['failed']} cell(s) failed; see <cell>/pretrain.log or sft.log, then rerun")
