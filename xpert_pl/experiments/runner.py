"""`xpert bench run <matrix>`: run what is missing of an experiment matrix, resuming what was interrupted.

The runs folder is laid out by `RunLayout` (`xpert_pl.layout`), which `xpert report` reads. The shared stages
(tokenizer, source MoE, analysis, banks) run in this process through the pipeline's functions, each skipped once
done; every cell's training runs `xpert_pl.pipeline.training` in its own process, so a crash or a kill loses at most the
steps since the last checkpoint. A cell whose cell.json says `done` is skipped; a cell with a `last*.ckpt` but not
done resumes from it. The processes are forked from a server that has imported the kit once (`fork_server`).
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from xpert_pl.artifacts import ARTIFACT_FILE, plain_json, read_json, replace_problem, write_json
from xpert_pl.errors import ConfigError, raise_if_problems
from xpert_pl.experiments.fork_server import cell_threads, check_kit_unchanged, run_forked
from xpert_pl.experiments.matrix import Cell, ExperimentMatrix, Stage, load_matrix, shipped_or_local
from xpert_pl.experiments.stages import CachedStages, validation_interval
from xpert_pl.layout import (
    CELL_FILE,
    HF_DIR,
    SELECTION_FILE,
    SHARED_DIR,
    Artifact,
    RunLayout,
    bank_manifest,
    hf_config,
    run_last_checkpoint,
)
from xpert_pl.paths import data_root as resolve_data_root
from xpert_pl.paths import shown_path
from xpert_pl.pipeline.config import Config, bind_artifacts, load_config, merge, needed_artifacts, nested
from xpert_pl.tokenizer import META_FILE, is_local_dir_or_hub_id
from xpert_pl.tokenizer_training import train_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitCall:
    """One training run of a cell: the arguments of `xpert_pl.pipeline.training` (picklable: it runs in its own
    process).

    Attributes:
        config: the whole fit configuration (files merged, the cell's settings and artifacts bound).
        run_dir: the run folder.
        resume: continue from the newest `run_dir/checkpoints/last*.ckpt`.
        overwrite: replace what a start that died before its first checkpoint left (the cell owns its folder).
    """

    config: Config
    run_dir: Path
    resume: bool = False
    overwrite: bool = False

    def __call__(self) -> None:
        from xpert_pl.pipeline.training import fit

        fit(self.config, self.run_dir, resume=self.resume, overwrite=self.overwrite)


Launcher = Callable[[FitCall, Path], int]


@dataclass
class MatrixRunner:
    """Runs an `ExperimentMatrix`: the shared source pipeline in this process, every cell as its own process.

    Attributes:
        matrix: the parsed matrix.
        jobs: cells and learning-rate sweep runs trained at the same time (each a separate process).
        launch: runs one `FitCall` and returns its exit status (None: `run_forked`, each cell with an equal share of
            torch's threads when `jobs` > 1; tests replace it).
    """

    matrix: ExperimentMatrix
    jobs: int = 1
    launch: Launcher | None = None
    only: Sequence[str] | None = None
    """Run only the cells of these methods (`--only`); the shared stages and the learning-rate sweep run whole."""
    layout: RunLayout = field(init=False)
    learning_rate: float | None = field(init=False, default=None)
    """Every cell's learning rate, once the matrix's learning-rate sweep has chosen it (None: the configs')."""

    def __post_init__(self) -> None:
        self.layout = RunLayout(self.matrix.out_dir, self.matrix.source_hf)
        if self.launch is None:
            self.launch = functools.partial(run_forked, threads=cell_threads(self.jobs))

    @property
    def shared(self) -> Path:
        return self.layout.shared

    def data_settings(self) -> dict[str, Any]:
        """Data-module settings every run shares: data root, tokenizer, cache, and the matrix's `data` block."""
        data: dict[str, Any] = {"data_root": resolve_data_root(self.matrix.data.get("data_root"))}
        data |= {"tokenizer": self.layout.tokenizer, "cache_dir": self.layout.cache}
        data |= {k: v for k, v in self.matrix.data.items() if k != "data_root"}
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}

    def method_config(self, method: str) -> Config:
        """A method's YAML with its artifacts bound to this experiment's files."""
        return bind_artifacts(load_config([self.matrix.methods[method]]), self.layout, method)

    def needs(self, artifact: Artifact) -> bool:
        """Whether some method of the matrix reads `artifact`."""
        return any(artifact in needed_artifacts(load_config([m])) for m in self.matrix.methods.values())

    def run_shared(self) -> dict[str, float]:
        """Tokenizer (unless `data.tokenizer` names one), source MoE (unless given), expert analysis and knowledge
        bank, each skipped once done; the same procedure on an untrained copy of the source when a method reads its
        bank (UntrainedSourceInit); each control's own bank (random or rare experts) when a method reads one."""
        layout = self.layout
        stages = CachedStages("bench", record=layout.wall_times, settings_file=layout.stage_settings)
        if "tokenizer" not in self.matrix.data:
            data_root = str(self.data_settings()["data_root"])
            stages.run(
                "tokenizer",
                layout.tokenizer / META_FILE,
                lambda: train_tokenizer(layout.tokenizer, data_root, **self.matrix.tokenizer),
                settings={"data_root": data_root, **self.matrix.tokenizer},
            )
        if self.matrix.source_hf is None:
            stages.run("source MoE", hf_config(layout.source_hf), self._train_source, settings=self._source_config())
        stages.run("unigram baseline", layout.unigram, self._unigram_baseline, settings=self.data_settings())
        self._analysis_and_bank(stages, "", layout.source_hf, layout.analysis, layout.bank)
        if self.needs(Artifact.UNTRAINED_BANK):
            from xpert_pl.models import make_untrained_copy  # transformers' model classes: only when needed

            copy = layout.untrained / HF_DIR
            stages.run("untrained copy", hf_config(copy), lambda: make_untrained_copy(str(layout.source_hf), str(copy)))
            self._analysis_and_bank(stages, "untrained ", copy, layout.untrained / "analysis", layout.untrained_bank)
        for method in self.matrix.methods:
            if Artifact.CONTROL_BANK in needed_artifacts(self.method_config(method)):
                bank = layout.control_bank(method)
                stages.run(f"{method} bank", bank_manifest(bank), lambda m=method, b=bank: self._control_bank(m, b))
        return stages.seconds

    def _train_source(self) -> None:
        from xpert_pl.pipeline.training import fit

        # The stage owns its folder: a run killed after a checkpoint resumes from it (an hour-long source loses at
        # most the steps since); one that died before any is replaced (kept aside until the new one completes).
        resume = run_last_checkpoint(self.layout.source_run) is not None
        fit(self._source_config(), self.layout.source_run, resume=resume, overwrite=not resume)

    def _source_config(self) -> Config:
        stage, steps = self.matrix.source, self.matrix.source.steps or 0
        settings = {"trainer.max_steps": steps, "trainer.val_check_interval": validation_interval(steps)}
        return self.stage_config(stage, settings)

    def _unigram_baseline(self) -> None:
        """A unigram model of the train split scored on the validation blocks the source (else the first student
        scale) is validated on: what the report reads the source's loss against."""
        from xpert_pl.data import PretrainDataModule
        from xpert_pl.data.unigram import unigram_losses

        stage = self.matrix.source if self.matrix.source_hf is None else next(iter(self.matrix.scales.values()))
        settings = self.stage_config(stage, {})["data"]["init_args"]
        data = PretrainDataModule(**settings)
        data.setup("validate")
        write_json(self.layout.unigram, {"smoothing": 1.0, "data": settings, "loss": unigram_losses(data)})

    def stage_config(self, stage: Stage, settings: dict[str, Any], method: str | None = None) -> Config:
        """A training stage's configuration, later layers winning: its config files, its overrides, the method's
        YAML (artifacts bound), the shared data settings, then `settings` (dotted keys)."""
        config = self.with_overlay(stage_base(stage))
        if method is not None:
            config = merge(config, self.method_config(method))
        data = {f"data.init_args.{k}": v for k, v in self.data_settings().items()}
        return merge(config, nested({**data, **settings}))

    def _analysis_and_bank(self, stages: CachedStages, label: str, model: Path, analysis: Path, bank: Path) -> None:
        """`analyze` and `extract` of `model` into `analysis` and `bank`, with the matrix's analyze/extract configs."""
        from xpert_pl.pipeline.config import call_with_config
        from xpert_pl.pipeline.steps import analyze, extract

        settings = {"model": str(model), "out_dir": str(analysis), "data": self.data_settings()}
        analyze_config = self.function_config(self.matrix.analyze, settings)
        selection = analysis / SELECTION_FILE
        stages.run(f"{label}analysis", selection, lambda: call_with_config(analyze, analyze_config), analyze_config)
        settings = {"model": str(model), "selection": str(selection), "out_dir": str(bank)}
        extract_config = self.function_config(self.matrix.extract, settings)
        run_extract = functools.partial(call_with_config, extract, extract_config)
        stages.run(f"{label}knowledge bank", bank_manifest(bank), run_extract, extract_config)

    def with_overlay(self, config: Config) -> Config:
        """`config` with the matrix's `training_overlay` files laid over it (a training stage's base)."""
        overlay = self.matrix.training_overlay
        return merge(config, load_config(list(overlay))) if overlay else config

    @staticmethod
    def function_config(stage: Stage, settings: dict[str, Any]) -> Config:
        """An analyze/extract stage's arguments: its YAML(s), its overrides, then `settings`."""
        return merge(stage_base(stage), settings)

    def _control_bank(self, method: str, bank: Path) -> None:
        """Build `method`'s own bank once (a control with its own selection), for every cell of the method."""
        from xpert_pl.pipeline.config import build_class

        spec = self.method_config(method)["model"]["initializer"]
        control = build_class(merge(spec, {"init_args": {"bank": None}}))
        control.build_bank().save(bank)

    def pretrain_call(self, cell: Cell) -> FitCall:
        """The training run of a cell (resuming from its last checkpoint when it has one)."""
        run_dir = self.layout.cell(cell.scale, cell.budget, cell.method, cell.seed)
        settings = {
            "seed_everything": cell.seed,
            "data.init_args.seed": cell.seed,
            "trainer.max_steps": cell.steps,
            "trainer.val_check_interval": validation_interval(cell.steps),
        }
        if self.learning_rate is not None:
            settings["model.learning_rate"] = self.learning_rate
        config = self.stage_config(self.matrix.scales[cell.scale], settings, cell.method)
        resume = run_last_checkpoint(run_dir) is not None
        # The cell owns its folder: a start that died before its first checkpoint is replaced, not mixed with.
        return FitCall(config, run_dir, resume=resume, overwrite=not resume)

    def sft_call(self, cell: Cell) -> FitCall:
        """The follow-up fine-tuning of a cell: a warm start from its exported model."""
        stage = self.matrix.sft.stage
        run_dir = self.layout.cell(cell.scale, cell.budget, cell.method, cell.seed)
        shared = {k: v for k, v in self.data_settings().items() if k in ("data_root", "tokenizer")}
        settings = {f"data.init_args.{k}": v for k, v in shared.items()}
        settings |= {"model.init_checkpoint": str(run_dir / HF_DIR), "seed_everything": cell.seed}
        settings |= {"trainer.max_steps": stage.steps}
        return FitCall(merge(self.with_overlay(stage_base(stage)), nested(settings)), run_dir / "sft", overwrite=True)

    def run_cell(self, cell: Cell) -> str:
        """Run (or resume) one cell and its follow-up stages; returns its final status."""
        run_dir = self.layout.cell(cell.scale, cell.budget, cell.method, cell.seed)
        record = read_json(run_dir / CELL_FILE) if (run_dir / CELL_FILE).is_file() else {}
        stages = [("pretrain", lambda: pretrain, hf_config(run_dir / HF_DIR))]
        if self.matrix.wants_sft(cell):
            stages.append(("sft", lambda: self.sft_call(cell), hf_config(run_dir / "sft" / HF_DIR)))
        if record.get("status") == "done" and all(marker.is_file() for _, _, marker in stages[1:]):
            return "skipped"  # a follow-up stage added to the matrix since (sft) runs on a done cell
        kept = {k: record[k] for k in ("stage_wall_s", "reused_from") if k in record}  # from an earlier attempt
        record = {**_describe(cell), "status": "running", "stage_wall_s": {}, **kept}
        pretrain = self.pretrain_call(cell)
        record["learning_rate"] = pretrain.config.get("model", {}).get("learning_rate")
        record["fit_config"] = pretrain.config  # what `changed_cell_problems` compares a rerun's with
        write_json(run_dir / CELL_FILE, record)
        for name, build, marker in stages:
            if marker.is_file():
                continue
            if name == "pretrain" and self.reuse_sweep_run(pretrain, run_dir, record):
                continue
            start = time.perf_counter()
            status = self.launch(build(), run_dir / f"{name}.log")
            record["stage_wall_s"][name] = record["stage_wall_s"].get(name, 0.0) + time.perf_counter() - start
            if status != 0:
                write_json(run_dir / CELL_FILE, {**record, "status": "failed", "failed_stage": name})
                return "failed"
        record |= {"status": "done", "wall_s": sum(record["stage_wall_s"].values())}
        record["tokens_budget"] = _tokens_budget(run_dir, cell.steps)
        write_json(run_dir / CELL_FILE, record)
        return "done"

    def changed_cell_problems(self, cells: list[Cell]) -> list[str]:
        """Cells trained (or started) with another configuration than the matrix gives them now (an edited method
        YAML, another learning rate): refused before any cell runs, never kept as if they were this matrix's."""
        from xpert_pl.experiments.stages import settings_differences

        problems = []
        for cell in cells:
            run_dir = self.layout.cell(cell.scale, cell.budget, cell.method, cell.seed)
            trained = hf_config(run_dir / HF_DIR).is_file() or run_last_checkpoint(run_dir) is not None
            if not trained or not (run_dir / CELL_FILE).is_file():
                continue  # nothing trained yet: the cell starts anew with today's configuration
            recorded = read_json(run_dir / CELL_FILE).get("fit_config")
            given = plain_json(self.pretrain_call(cell).config)
            differ = settings_differences(recorded, given) if recorded is not None else []
            if differ:
                problems.append(
                    f"cell '{run_dir}' was trained with another configuration ({'; '.join(differ[:3])}); give the "
                    "matrix a new out_dir, or move the cell's folder away to train it anew"
                )
        return problems

    def reuse_sweep_run(self, pretrain: FitCall, run_dir: Path, record: dict[str, Any]) -> bool:
        """Copy the learning-rate sweep's finished run with the same configuration as this cell's pretraining (a
        swept method at the sweep's seed and the chosen rate) instead of training it again; False when none."""
        from xpert_pl.experiments.lr_sweep import copy_run, finished_twin

        twin = finished_twin(self, pretrain)
        if twin is None:
            return False
        copy_run(twin, run_dir)
        record |= {"reused_from": str(twin), "stage_wall_s": {**record["stage_wall_s"], "pretrain": 0.0}}
        log.info("[bench] %s: the same run as the sweep's %s, copied", run_dir, twin)
        return True

    def write_matrix_record(self, matrix_file: Path) -> None:
        """The matrix as run, for the report: the file itself, or for a matrix that `extends` another, the resolved
        mapping (the file as written is kept beside it as `matrix.extends.yaml`; a plain matrix run after an extending
        one in the same folder removes that file, which no longer describes the record)."""
        record = self.matrix.out_dir / "matrix.yaml"
        if not self.matrix.extended:
            shutil.copyfile(matrix_file, record)
            (self.matrix.out_dir / "matrix.extends.yaml").unlink(missing_ok=True)
            return
        import yaml

        shutil.copyfile(matrix_file, self.matrix.out_dir / "matrix.extends.yaml")
        header = f"# {shown_path(matrix_file)} resolved: the matrix it extends, with its own keys laid over\n"
        record.write_text(header + yaml.safe_dump(self.matrix.spec, sort_keys=False))

    def config_problems(self) -> list[str]:
        """Every cell's fit configuration parsed and checked (nothing built or run), one problem per cell kind
        (scale x method, and its fine-tuning), so a typo surfaces before the shared stages start."""
        from xpert_pl.pipeline.training import fit_config_problems

        problems, seen = [], set()
        for cell in self.matrix.cells():
            calls = [("pretrain", self.pretrain_call)]
            calls += [("sft", self.sft_call)] if self.matrix.wants_sft(cell) else []
            for stage, build in calls:
                if (cell.scale, cell.method, stage) in seen:
                    continue
                seen.add((cell.scale, cell.method, stage))
                call = build(cell)
                config = {k: v for k, v in call.config.items() if k != "ckpt_path"}
                problems += [f"cell {cell.scale}/{cell.method} ({stage}): {p}" for p in fit_config_problems(config)]
        return problems

    def given_input_problems(self) -> list[str]:
        """The inputs the matrix takes from elsewhere that are neither a local directory nor a Hub id, checked before
        the runs folder is made: a matrix that reuses another bench's source names paths that exist once it has run."""
        given = {
            "data.tokenizer": (
                self.matrix.data.get("tokenizer"),
                "a trained tokenizer's directory (`xpert tokenizer`)",
            ),
            "source.hf": (self.matrix.source_hf, "a source MoE's Hugging Face directory or Hub id"),
        }
        return [
            f"{option}: {value} is neither a local directory nor a Hub id; give {wanted}{_made_by(Path(str(value)))}"
            for option, (value, wanted) in given.items()
            if value is not None and not is_local_dir_or_hub_id(str(value))
        ]

    def run(self, matrix_file: Path | None = None) -> dict[str, int]:
        """The shared stages, then every cell; returns how many cells ended in each status."""
        where = f"{shown_path(matrix_file)}: " if matrix_file is not None else ""
        raise_if_problems([where + p for p in self.given_input_problems()])  # before anything is made or tokenised
        # A runs folder accumulates (reruns resume it): it must be one the kit made for a matrix, or new.
        problem = replace_problem(self.matrix.out_dir, "bench", "the matrix's out_dir")
        raise_if_problems([problem, *self.config_problems()] if problem else self.config_problems())
        check_kit_unchanged()  # the kit this bench runs on: its cells are refused if it changes under them
        self.matrix.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.matrix.out_dir / ARTIFACT_FILE, {"kind": "bench", "version": 1})
        if matrix_file is not None:
            self.write_matrix_record(matrix_file)
        self.run_shared()
        if self.matrix.lr_sweep is not None:
            from xpert_pl.experiments.lr_sweep import run_lr_sweep

            self.learning_rate = run_lr_sweep(self, self.matrix.lr_sweep)["chosen"]
            log.info("[bench] learning rate of every cell: %g (the sweep's best for scratch)", self.learning_rate)
        # --only limits the cells, not the matrix: the sweep and the controls' banks need every method's config.
        cells = [c for c in self.matrix.cells() if self.only is None or c.method in self.only]
        raise_if_problems(self.changed_cell_problems(cells))
        counts: dict[str, int] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
            for status in tqdm(pool.map(self.run_cell, cells), total=len(cells), desc="cells", unit="cell"):
                counts[status] = counts.get(status, 0) + 1
        return counts


def _made_by(path: Path) -> str:
    """The fix for a path into another bench's runs folder (`<out_dir>/shared/...`): run that bench first."""
    if SHARED_DIR not in path.parts[1:]:
        return ""
    out_dir = Path(*path.parts[: path.parts.index(SHARED_DIR)])
    made_by = " (`make bench`)" if out_dir == Path("runs/bench-reference") else ""
    return f", or run the bench whose out_dir is {out_dir}{made_by} first, then this one"


def stage_base(stage: Stage) -> Config:
    """A stage's own configuration: its config files merged in order, then its overrides."""
    return merge(load_config([stage.config, *stage.configs]), nested(stage.overrides))


def _describe(cell: Cell) -> dict[str, Any]:
    return {"scale": cell.scale, "budget": cell.budget, "method": cell.method, "seed": cell.seed, "steps": cell.steps}


def _tokens_budget(run_dir: Path, steps: int) -> int | None:
    """Tokens a run was given: steps x batch size x block size (x devices), from its saved config."""
    from xpert_pl.pipeline.training import run_config, tokens_per_step

    per_step = tokens_per_step(run_config(run_dir))
    return None if per_step is None else steps * per_step


def bench_run(matrix: str, jobs: int = 1, only: Sequence[str] | None = None) -> None:
    """Run what is missing of an experiment matrix (finished cells are skipped, interrupted ones resumed).

    Args:
        matrix: the matrix YAML (e.g. `configs/bench/quick.yaml`).
        jobs: cells (and learning-rate sweep runs) trained at the same time, each in its own process with an equal
            share of torch's threads (on a 2-core CPU, 2 jobs train about 1.13x the tokens per second of 1; on a GPU
            keep 1).
        only: run only the cells of these methods (the shared stages and the learning-rate sweep always run).
    """
    parsed = load_matrix(matrix)
    unknown = [m for m in only or () if m not in parsed.methods]
    if unknown:
        raise ConfigError([f"--only names {unknown}, not methods of {matrix}; choose from {', '.join(parsed.methods)}"])
    from xpert_pl.experiments.lr_sweep import SweepRunFailed

    try:
        counts = MatrixRunner(parsed, jobs=jobs, only=only or None).run(shipped_or_local(Path.cwd(), matrix))
    except SweepRunFailed as err:
        raise SystemExit(f"xpert bench run: {err}") from None  # like a failed cell: exit 1, its log says why
    print(json.dumps({"out_dir": str(parsed.out_dir), **counts}))
    if counts.get("failed"):
        raise SystemExit(f"{counts['failed']} cell(s) failed; see <cell>/pretrain.log or sft.log, then rerun")
