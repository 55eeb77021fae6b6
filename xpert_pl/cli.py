"""The `xpert` command: `fit`/`validate`/`test` through LightningCLI; `tokenizer`, `analyze`, `extract`, `demo` as
functions.

Examples:
    xpert tokenizer --out_dir runs/tokenizer --vocab_size 4096
    xpert fit --config configs/pretrain/tiny.yaml --config configs/methods/xpert.yaml
    xpert analyze --config configs/analyze/tiny.yaml
    xpert extract --config configs/extract/tiny.yaml
    xpert demo
    xpert bench run configs/bench/quick.yaml
    xpert report runs/bench-quick
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from xpert_pl.cli_errors import report
from xpert_pl.errors import ConfigError, raise_if_problems
from xpert_pl.training.module import CausalLMModule
from xpert_pl.training.warm_start import check_vocabularies

LIGHTNING_COMMANDS = ("fit", "validate", "test")


class XpertCLI(LightningCLI):
    """LightningCLI that links the tokenizer's vocabulary and the domain names into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data", "model.vocab_size", compute_fn=lambda data: data.vocab_size, apply_on="instantiate"
        )
        parser.link_arguments(
            "data", "model.val_domains", compute_fn=lambda data: list(data.domain_names), apply_on="instantiate"
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        problems = []
        ckpt_path = config.get("ckpt_path")
        init_checkpoint = config.get("model", {}).get("init_checkpoint")
        if ckpt_path and init_checkpoint:
            problems.append(
                f"both --ckpt_path ({ckpt_path}) and --model.init_checkpoint ({init_checkpoint}) are set: "
                "--ckpt_path resumes an interrupted run (weights, optimizer, step, data position); "
                "--model.init_checkpoint starts a new run from those weights. Drop one of them."
            )
        raise_if_problems(problems)
        if self.subcommand == "fit" and config.get("weights_only") is None:
            # Resuming unpickles the checkpoint: only tensors and plain data unless the user vouches for the file.
            config["weights_only"] = True

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        tokenizer = getattr(self.datamodule, "tokenizer", None)
        if tokenizer is not None and isinstance(self.model, CausalLMModule):
            # Fail fast: fit loads the weights only later, in configure_model.
            check_vocabularies(self.model.model_builder, self.model.hparams.init_checkpoint, tokenizer)


def run_lightning_cli(args: list[str], run: bool = True) -> XpertCLI:
    """Run (or, with run=False, only build: the subcommand is then dropped) the LightningCLI for `args`."""
    from lightning import LightningDataModule

    if not run and args and args[0] in LIGHTNING_COMMANDS:
        args = args[1:]
    # `xpert` passes its own argv on purpose; Lightning would warn that sys.argv holds the same arguments.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return XpertCLI(
        CausalLMModule,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        # Errors reach `main` as exceptions, which it reports in one paragraph with the fix.
        parser_kwargs={"exit_on_error": False, "allow_abbrev": False},
    )


def _function_commands() -> dict[str, Callable | dict[str, Callable]]:
    from xpert_pl.commands import analyze, demo, extract
    from xpert_pl.experiments.runner import bench_run
    from xpert_pl.models import make_untrained_copy
    from xpert_pl.report import write_report
    from xpert_pl.tokenizer import train_tokenizer

    return {
        "tokenizer": train_tokenizer,
        "analyze": analyze,
        "extract": extract,
        "demo": demo,
        "bench": {"run": bench_run},
        "report": write_report,
        "untrained-source": make_untrained_copy,
    }


# Commands whose required arguments are positional (`xpert bench run <matrix>`); the others take --name=value.
POSITIONAL = ("bench", "report")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `xpert` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = _function_commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), "\n\ncommands:", ", ".join([*LIGHTNING_COMMANDS, *commands]))
        return
    command, rest = argv[0], argv[1:]
    try:
        if command in LIGHTNING_COMMANDS:
            run_lightning_cli(argv)
        elif command in commands:
            from jsonargparse import auto_cli

            auto_cli(commands[command], args=rest, as_positional=command in POSITIONAL, exit_on_error=False)
        else:
            raise ConfigError(
                [f"unknown command '{command}'; choose one of: {', '.join([*LIGHTNING_COMMANDS, *commands])}"]
            )
    except Exception as err:
        if debug or not report(err, command, argv, sys.stderr):
            raise
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
