"""LightningCLI behind `xpert fit/validate/test`: the configuration checked before anything is built, one run per
run folder, and a parse-only mode that checks a configuration without building it."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from xpert_pl.errors import raise_if_problems
from xpert_pl.training.module import CausalLMModule
from xpert_pl.training.warm_start import check_vocabularies

# The subcommands `xpert` hands to LightningCLI (xpert_pl.cli.LIGHTNING_COMMANDS, kept there without importing this).
LIGHTNING_COMMANDS = ("fit", "validate", "test")

log = logging.getLogger(__name__)


class XpertCLI(LightningCLI):
    """LightningCLI that links the tokenizer's vocabulary and the domain names into the model, checks the whole
    configuration before anything is loaded or tokenised, and keeps one run per run folder."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data", "model.vocab_size", compute_fn=lambda data: data.vocab_size, apply_on="instantiate"
        )
        parser.link_arguments(
            "data", "model.val_domains", compute_fn=lambda data: list(data.domain_names), apply_on="instantiate"
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="Replace a finished run in the run folder (it is kept aside until the new run completes).",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if self.subcommand in ("validate", "test") and config.get("ckpt_path"):
            # A fine-tuned run's config names its warm start; evaluating its checkpoint replaces those weights.
            (config.get("model") or {})["init_checkpoint"] = None
        raise_if_problems(config_problems(config))
        if self.subcommand == "fit" and config.get("weights_only") is None:
            # Resuming unpickles the checkpoint: only tensors and plain data unless the user vouches for the file.
            config["weights_only"] = True
        if self.subcommand in ("validate", "test"):
            self.evaluated_run_dir = _log_beside_the_run(config, self.subcommand)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would lay a --ckpt_path file's hyperparameters over the config (but not for `last`), so an
        # option the user changed would be silently replaced. The model is built as the config says, and
        # `before_fit` refuses a checkpoint whose hyperparameters differ (`checkpoint_problems`).
        return

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, its checkpoints written atomically (`AtomicCheckpointIO`) unless the config names another
        CheckpointIO (as a plugin or in its strategy). Added here, not as a parser default: config.yaml cannot
        record an instance default, and a saved config must run again as it is."""
        from lightning.pytorch.plugins.io import CheckpointIO

        from xpert_pl.training.checkpointing import AtomicCheckpointIO

        trainer = self._get(self.config_init, "trainer", default={})
        plugins = kwargs.get("plugins", trainer.get("plugins"))
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        strategy_io = getattr(trainer.get("strategy"), "_checkpoint_io", None)  # Lightning refuses a second one
        if strategy_io is None and not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(**{**kwargs, "plugins": plugins})

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        tokenizer = getattr(self.datamodule, "tokenizer", None)
        if tokenizer is not None and isinstance(self.model, CausalLMModule):
            # Fail fast: fit loads the weights only later, in configure_model.
            check_vocabularies(self.model.model_builder, self.model.hparams.init_checkpoint, tokenizer)

    def before_fit(self) -> None:
        if not _is_launching_process():
            return  # a DDP worker started by rank 0, which already checked and locked the folder
        from xpert_pl.training.checkpointing import checkpoint_problems
        from xpert_pl.training.run_folder import RunFolder

        config = self.config["fit"]
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        ckpt_path, weights_only = config.get("ckpt_path"), bool(config.get("weights_only", True))
        self.run_folder = RunFolder(run_dir, resume=ckpt_path is not None, overwrite=bool(config.get("overwrite")))
        check_sources = getattr(self.datamodule, "check_sources", None)
        if check_sources is not None:
            check_sources()  # bad data files are named before anything is written or tokenised
        self.model.preflight()  # banks, analyses, teachers: validated before anything is written or tokenised
        model = _meta_model(self.model)
        problems = self.run_folder.problems()
        problems += _shape_problems(model, self.datamodule)
        directory, hparams = _checkpoint_dir(self.trainer, run_dir), dict(self.model.hparams)
        problems += checkpoint_problems(ckpt_path, directory, model, weights_only, hparams)
        raise_if_problems(problems)
        self.run_folder.acquire()
        self.trainer.callbacks.append(self.run_folder)  # lets the lock go if the run fails

    def before_validate(self) -> None:
        """A missing, corrupt or foreign `--ckpt_path` is the user's error (exit 2), not a traceback from torch.load or
        load_state_dict. Training hyperparameters (learning rate, schedule) may differ: they do not change an
        evaluation."""
        from xpert_pl.training.checkpointing import checkpoint_problems

        config = self.config[self.subcommand]
        log_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        raise_if_problems(_evaluation_log_problems(self.subcommand, log_dir))
        run_dir = getattr(self, "evaluated_run_dir", None) or log_dir
        if run_dir != log_dir:
            log.info(
                "%s logs into %s, beside the run in %s (which it leaves as it is)", self.subcommand, log_dir, run_dir
            )
        weights_only = config.get("weights_only") is not False  # unpickle only when the user vouches for the file
        directory, model = _checkpoint_dir(self.trainer, run_dir), _meta_model(self.model)
        raise_if_problems(checkpoint_problems(config.get("ckpt_path"), directory, model, weights_only))

    def before_test(self) -> None:
        from lightning import LightningDataModule

        self.before_validate()
        if type(self.datamodule).test_dataloader is LightningDataModule.test_dataloader:
            raise_if_problems(
                [
                    f"xpert test: the data module {type(self.datamodule).__name__} has no test sets (pre-training data "
                    "has train and validation splits only); evaluate it with `xpert validate`, or test with a data "
                    "module that has them (xpert_pl.data.SFTDataModule: its evaluation sets)"
                ]
            )

    def after_fit(self) -> None:
        folder = getattr(self, "run_folder", None)
        if folder is not None:
            folder.release(completed=not self.trainer.interrupted)


def config_problems(config) -> list[str]:
    """Problems a fit/validate/test configuration shows before any class is built."""
    problems = []
    ckpt_path = config.get("ckpt_path")
    model, data, trainer = config.get("model") or {}, config.get("data") or {}, config.get("trainer") or {}
    init_checkpoint = model.get("init_checkpoint")
    if ckpt_path and init_checkpoint:
        problems.append(
            f"both --ckpt_path ({ckpt_path}) and --model.init_checkpoint ({init_checkpoint}) are set: "
            "--ckpt_path resumes an interrupted run (weights, optimizer, step, data position); "
            "--model.init_checkpoint starts a new run from those weights. Drop one of them."
        )
    initializer = model.get("initializer")
    initializer = getattr(initializer, "class_path", None) or (initializer or {}).get("class_path")
    if init_checkpoint and initializer and initializer.rsplit(".", 1)[-1] != "ScratchInit":
        problems.append(
            f"both --model.init_checkpoint ({init_checkpoint}) and --model.initializer ({initializer}) are set: a warm "
            "start loads every weight from the checkpoint, so the initializer would be ignored. Drop one of them."
        )
    checks = {
        "model.learning_rate": (model.get("learning_rate"), lambda v: v > 0, "> 0"),
        "model.weight_decay": (model.get("weight_decay"), lambda v: v >= 0, ">= 0"),
        "model.warmup_steps": (model.get("warmup_steps"), lambda v: v >= 0, ">= 0"),
        "data.init_args.batch_size": (_init_arg(data, "batch_size"), lambda v: v >= 1, ">= 1"),
        "data.init_args.block_size": (_init_arg(data, "block_size"), lambda v: v >= 2, ">= 2"),
        "trainer.max_steps": (trainer.get("max_steps"), lambda v: v >= 1 or v == -1, ">= 1 (or -1: no limit)"),
    }
    for key, (value, ok, rule) in checks.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and not ok(value):
            problems.append(f"--{key} must be {rule}, got {value}")
    return problems


def _init_arg(group, name: str):
    init_args = group.get("init_args") if hasattr(group, "get") else None
    return init_args.get(name) if init_args is not None and hasattr(init_args, "get") else None


def _is_launching_process() -> bool:
    """True in the process the user started (Lightning sets LOCAL_RANK/NODE_RANK in the workers it launches)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _meta_model(module):
    """The run's model built on the meta device (shapes only, no memory), or None when it cannot be built so."""
    import torch

    builder = getattr(module, "model_builder", None)
    if builder is None or not hasattr(builder, "config"):
        return None  # e.g. a model loaded from disk: its checks happen when it loads
    with torch.device("meta"):
        return builder.build(module.hparams.vocab_size)


def _shape_problems(model, datamodule) -> list[str]:
    """A data block must fit the model's positions."""
    if model is None:
        return []
    # Heads vs hidden size is checked where the builder resolves its preset (xpert_pl.models), before this runs.
    config, problems = model.config, []
    hparams = getattr(datamodule, "hparams", {})
    block = hparams.get("block_size") or hparams.get("max_length")
    positions = getattr(config, "max_position_embeddings", None)
    if block and positions and block > positions:
        problems.append(
            f"data block size {block} exceeds the model's max_position_embeddings {positions}; lower "
            "--data.init_args.block_size or raise the model's max_position_embeddings"
        )
    return problems


def _log_beside_the_run(config, subcommand: str) -> Path | None:
    """validate/test write into `<run folder>/<subcommand>/version_N` when their CSVLogger's folder holds anything
    (e.g. the run whose checkpoint they evaluate): Lightning's CSVLogger deletes the metrics.csv of the folder it logs
    into, and the config would be saved over the run's. Returns that folder (None: logged where configured)."""
    from xpert_pl.layout import last_checkpoint

    logger = (config.get("trainer") or {}).get("logger")
    init_args = getattr(logger, "init_args", None)
    if init_args is None or not str(getattr(logger, "class_path", "")).endswith("CSVLogger"):
        return None
    version = init_args.get("version")
    if version is None:
        return None  # the logger picks a new version_N folder itself
    name = init_args.get("name") or ""
    folder = (
        Path(init_args.get("save_dir") or ".") / name / (version if isinstance(version, str) else f"version_{version}")
    )
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    if not config.get("ckpt_path"):  # a warm start too: it would score the weights the run started from
        problem = (
            f"xpert {subcommand}: '{folder}' holds a run, but no --ckpt_path is given, so a freshly initialised "
            "model would be evaluated as if it were that run. Evaluate the run with --ckpt_path last (or a .ckpt "
            "file); to evaluate the initialisation, log elsewhere with --trainer.logger.init_args.save_dir=<new folder>"
        )
        raise_if_problems([problem])
    init_args["save_dir"], init_args["name"], init_args["version"] = str(folder / subcommand), "", None
    last = last_checkpoint(folder / "checkpoints")
    if config.get("ckpt_path") == "last" and last is not None:
        raise_if_problems(_stale_last_problems(last, folder / "hf" / "xpert_export.json"))
        config["ckpt_path"] = str(last)  # the run's, not the new folder's
    return folder


def _stale_last_problems(last: Path, export_record: Path) -> list[str]:
    """`--ckpt_path last` of a run whose last checkpoint is older than its final weights (checkpoints every N steps,
    the run ended between two): it would score an earlier model as the run's."""
    import json

    import torch

    if not export_record.is_file():
        return []
    try:
        step = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
        final = int(json.loads(export_record.read_text()).get("global_step", -1))
    except Exception:  # unreadable: checkpoint_problems reports the checkpoint
        return []
    if step >= final:
        return []
    return [
        f"--ckpt_path last: '{last}' is at step {step}, but the run ended at step {final} (its final weights are "
        f"in '{export_record.parent}'). Evaluate those with --model.init_checkpoint={export_record.parent} and "
        "--trainer.logger.init_args.save_dir=<new folder>, or give the earlier checkpoint's file to score it"
    ]


def _evaluation_log_problems(subcommand: str, log_dir: Path) -> list[str]:
    """validate/test save their config into their log folder (and a CSVLogger deletes its metrics.csv): refused
    where that would replace a file, e.g. with another logger or none (the working directory)."""
    kept = [log_dir / name for name in ("config.yaml", "metrics.csv") if (log_dir / name).exists()]
    if not kept:
        return []
    return [
        f"xpert {subcommand} would log into '{log_dir}' and replace {', '.join(map(str, kept))}; log elsewhere with "
        "--trainer.logger.init_args.save_dir=<new folder> (or --trainer.default_root_dir=<new folder> without a logger)"
    ]


def _checkpoint_dir(trainer, run_dir: Path) -> Path:
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    return Path(dirpath) if dirpath else run_dir / "checkpoints"


class _ParseOnlyCLI(XpertCLI):
    """Parses and checks a configuration (types, class paths, values) without building any of its classes."""

    def instantiate_classes(self) -> None:
        pass


def run_lightning_cli(args: list[str] | dict[str, Any], run: bool = True, parse_only: bool = False) -> XpertCLI:
    """Run (or, with run=False, only build: the subcommand is then dropped) the LightningCLI for `args`: a command
    line, or a configuration dict `{"fit": {...}}` (`xpert_pl.pipeline.training`); `parse_only` checks the
    configuration and builds nothing (nothing is loaded, tokenised or written)."""
    from lightning import LightningDataModule

    run = run and not parse_only
    if not run and isinstance(args, dict) and len(args) == 1 and next(iter(args)) in LIGHTNING_COMMANDS:
        args = next(iter(args.values()))
    elif not run and args and args[0] in LIGHTNING_COMMANDS:
        args = args[1:]
    # `xpert` passes its own argv on purpose; Lightning would warn that sys.argv holds the same arguments.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    from xpert_pl.training.checkpointing import InterruptCheckpoint

    cli_class = _ParseOnlyCLI if parse_only else XpertCLI
    return cli_class(
        CausalLMModule,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        trainer_defaults={"callbacks": [InterruptCheckpoint()]},
        # The run folder is guarded in before_fit: config.yaml is rewritten only for a resumed or overwritten run.
        save_config_kwargs={"overwrite": True},
        # Errors reach `main` as exceptions, which it reports in one paragraph with the fix.
        parser_kwargs={"exit_on_error": False, "allow_abbrev": False},
    )
