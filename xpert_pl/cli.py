"""The `xpert` command: `fit`/`validate`/`test` through LightningCLI; `tokenizer`, `analyze`, `extract`, `bench`,
`report`, `configs` wrap the pipeline's functions (`xpert_pl.pipeline`). Each command imports only what it needs,
so help starts at once.

Examples:
    xpert tokenizer --out_dir runs/tokenizer --vocab_size 4096
    xpert fit --config configs/pretrain/tiny.yaml --config configs/methods/xpert.yaml
    xpert analyze --config configs/analyze/tiny.yaml
    xpert extract --config configs/extract/tiny.yaml
    xpert bench run configs/bench/quick.yaml
    xpert report runs/bench-quick
    xpert configs
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from xpert_pl.cli_errors import config_files, duplicate_key_problems, report
from xpert_pl.errors import ConfigError, raise_if_problems

if TYPE_CHECKING:
    from xpert_pl.training.lightning_cli import XpertCLI

# Handed to LightningCLI (xpert_pl.training.lightning_cli), which is imported only when one of them runs.
LIGHTNING_COMMANDS = ("fit", "validate", "test")

# The other commands as "module:function" (or a mapping of subcommands), imported only when that command runs:
# `xpert --help`, an unknown command and `xpert report` never pay for torch and Lightning.
FUNCTION_COMMANDS: dict[str, str | dict[str, str]] = {
    "tokenizer": "xpert_pl.tokenizer_training:train_tokenizer",
    "analyze": "xpert_pl.pipeline.steps:analyze",
    "extract": "xpert_pl.pipeline.steps:extract",
    "bench": {"run": "xpert_pl.experiments.runner:bench_run"},
    "report": "xpert_pl.report:write_report",
    "untrained-source": "xpert_pl.models:make_untrained_copy",
    "configs": "xpert_pl.paths:list_configs",
}

# Commands whose required arguments are positional (`xpert bench run <matrix>`); the others take --name=value.
POSITIONAL = ("bench", "report")


SUMMARIES = {
    "fit": "train a model (LightningCLI: --config YAMLs; --print_config=comments documents every option)",
    "validate": "validate a model (LightningCLI)",
    "test": "test a model (LightningCLI)",
    "tokenizer": "train the byte-level BPE tokenizer on the corpus",
    "analyze": "count expert routing per layer and domain; select the common experts",
    "extract": "Tucker-decompose the selected experts into the knowledge bank",
    "bench": "run an experiment matrix (`xpert bench run configs/bench/demo.yaml`: the demo)",
    "report": "statistics, plots and provenance of a bench runs directory",
    "untrained-source": "an untrained copy of a source model (a control)",
    "configs": "list the shipped config YAMLs and the command that runs each",
}


def run_lightning_cli(args: list[str], run: bool = True, parse_only: bool = False) -> XpertCLI:
    """Run (or, with run=False, only build) the LightningCLI for `args`; see
    `xpert_pl.training.lightning_cli.run_lightning_cli`."""
    from xpert_pl.training.lightning_cli import run_lightning_cli as run_cli

    return run_cli(args, run=run, parse_only=parse_only)


def __getattr__(name: str):
    # XpertCLI and config_problems used to live here; loaded on first use so importing this module stays light.
    if name in ("XpertCLI", "config_problems"):
        from xpert_pl.training import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load(target: str | dict[str, str]) -> Callable | dict[str, Callable]:
    """The function a `FUNCTION_COMMANDS` entry names (imported now), or a mapping of them."""
    if isinstance(target, dict):
        return {name: _load(sub) for name, sub in target.items()}
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _usage() -> str:
    width = max(map(len, SUMMARIES))
    lines = [f"  {name:<{width}}  {summary}" for name, summary in SUMMARIES.items()]
    return "\n".join([__doc__.strip(), "", "commands:", *lines, "", "`xpert <command> --help` lists its options."])


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `xpert` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    _configure_logging()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command = argv[0]
    try:
        _run(command, argv)
    except KeyboardInterrupt:
        # fit saves and prints its own resume command; analyze and extract keep their finished pieces.
        if command not in LIGHTNING_COMMANDS:
            print(f"xpert {command}: interrupted; re-running the same command resumes (finished parts are kept)")
        raise SystemExit(130) from None
    except Exception as err:
        if debug or not report(err, command, argv, sys.stderr):
            raise
        raise SystemExit(2) from None
    except SystemExit as exit_:
        if _is_sigterm(exit_):
            raise SystemExit(143) from None  # a run stopped by SIGTERM must not look successful
        raise


def _configure_logging() -> None:
    """INFO logs as `LEVEL name: message`; Lightning's loggers keep printing bare messages (fit's output)."""
    if "lightning" not in sys.modules and not logging.getLogger().hasHandlers():
        # What importing Lightning does while no handler exists: `xpert` used to import it before configuring
        # logging, and now imports it only when a command needs it, so that is done here in its stead.
        for name in ("lightning.fabric", "lightning.pytorch"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.INFO)
            logger.addHandler(logging.StreamHandler())
            logger.propagate = False
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _run(command: str, argv: list[str]) -> None:
    """Run the command line `argv` (whose first item is `command`)."""
    raise_if_problems(duplicate_key_problems(config_files(argv)))
    if command in LIGHTNING_COMMANDS:
        run_lightning_cli(argv)
        return
    if command not in FUNCTION_COMMANDS:
        choices = ", ".join([*LIGHTNING_COMMANDS, *FUNCTION_COMMANDS])
        raise ConfigError([f"unknown command '{command}'; choose one of: {choices}"])
    if command == "extract":
        _passive_openmp_threads()
    from jsonargparse import auto_cli

    function = _load(FUNCTION_COMMANDS[command])
    auto_cli(function, args=argv[1:], as_positional=command in POSITIONAL, exit_on_error=False)


def _passive_openmp_threads() -> None:
    """Let idle OpenMP threads sleep instead of spin (unless OMP_WAIT_POLICY is set; only before torch loads).

    On a CPU shared with other jobs, spinning threads made extraction's eigendecompositions 2-7x slower
    (benchmarks/README.md, `real_scale.py`). Its cost on an idle CPU (later wake-ups) was not measured.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _is_sigterm(exit_: SystemExit) -> bool:
    # Only Lightning raises SIGTERMException: when it was never imported (e.g. `xpert report --help`), this is not one.
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(exit_, exceptions.SIGTERMException)


if __name__ == "__main__":
    main()
