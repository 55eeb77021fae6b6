"""What the `xpert` command says when a run cannot start or cannot finish: one paragraph naming the problem and
the fix (exit status 2), instead of a traceback. The README's bad-input table lists the cases."""

from __future__ import annotations

import argparse
import errno
import importlib
import inspect
import itertools
import pickle
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xpert_pl.errors import ConfigError

# Parser keys that take a `class_path`, and the packages whose public classes are valid there.
PLUGGABLE = {
    "model.initializer": ("xpert_pl.initializers.base:Initializer", ("xpert_pl.initializers",)),
    "model.objective": ("xpert_pl.training.objectives:TrainingObjective", ("xpert_pl.training",)),
    "model.model": ("xpert_pl.models:ModelBuilder", ("xpert_pl.models",)),
    "data": ("lightning:LightningDataModule", ("xpert_pl.data",)),
    "trainer.callbacks": ("lightning.pytorch.callbacks:Callback", ("xpert_pl.callbacks",)),
}
_DEBUG_HINT = "(run with --debug for the traceback)"


def valid_class_paths(key: str) -> list[str]:
    """Public, concrete classes usable at parser key `key` (e.g. `model.initializer`), as import paths."""
    if key not in PLUGGABLE:
        return []
    base_spec, packages = PLUGGABLE[key]
    module_name, base_name = base_spec.split(":")
    base = getattr(importlib.import_module(module_name), base_name)
    paths = []
    for package in packages:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", dir(module)):
            obj = getattr(module, name, None)
            if inspect.isclass(obj) and issubclass(obj, base) and not inspect.isabstract(obj) and obj is not base:
                paths.append(f"{package}.{name}")
    return sorted(paths)


def explain(err: BaseException, command: str, argv: list[str]) -> str | None:
    """The message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(err, argparse.ArgumentError):
        return _argument_error(err, command, argv)
    if isinstance(err, pickle.UnpicklingError):
        return _unpickling_error(err, argv)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" while writing {err.filename}" if err.filename else ""
        return (
            f"the disk is full{where}: that file was not kept, not even in part (artifacts and checkpoints are "
            "written to a temporary name and renamed); everything finished before it is intact: earlier "
            "checkpoints (resume with --ckpt_path last), finished domains, bank layers and stages. Free space, or "
            "point the output (--out_dir / --trainer.logger.init_args.save_dir) at another disk, and re-run."
        )
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "the file system is read-only" if err.errno == errno.EROFS else "permission denied"
        return (
            f"cannot write {err.filename or 'the output'} ({what}); nothing partial was kept. Choose an output "
            "folder you can write (--out_dir / --trainer.logger.init_args.save_dir) and re-run."
        )
    if isinstance(err, (ConfigError, FileNotFoundError, ValueError)):
        return _raised_by_a_class(str(err)) or str(err)
    return None


def _raised_by_a_class(text: str) -> str | None:
    """The user error a class raised while jsonargparse built it, without jsonargparse's report of the union of
    types it tried (`Does not validate against any of the Union subtypes ... Errors: - <the error> - ...`)."""
    if "Does not validate against any of the Union subtypes" not in text:
        return None
    found = re.search(r"Errors:\n\s*- (.+?)\n\s*- Expected a <class 'NoneType'>", text, re.S)
    if found is None or found.group(1).lstrip().startswith(("Problem with given class_path", "Expected a")):
        return None
    message = re.sub(r"\n\s*", " ", found.group(1)).strip()
    return re.split(r" - (?:Not a valid subclass|Expected a )", message)[0]


def config_files(argv: list[str]) -> list[str]:
    """The `--config` files of a command line."""
    paths = [b for a, b in itertools.pairwise(argv) if a in ("--config", "-c")]
    return paths + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def duplicate_key_problems(paths: list[str]) -> list[str]:
    """A problem per YAML file that repeats a key in one mapping (YAML readers silently keep the last value)."""
    import yaml

    from xpert_pl.yaml_io import DuplicateKeyError, load_yaml

    problems = []
    for path in paths:
        try:
            load_yaml(Path(path).read_text(encoding="utf-8"))
        except DuplicateKeyError as err:
            problems.append(f"config file '{path}': {err}; keep one of them")
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            pass  # reported by the parser, with its own message
    return problems


def _broken_yaml(argv: list[str]) -> str | None:
    """The first `--config` file that is not valid YAML, with the parser's complaint."""
    import yaml

    for path in config_files(argv):
        try:
            with open(path) as f:
                yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as err:
            return f"config file '{path}' is not valid YAML: {err}"
    return None


def _argument_error(err: argparse.ArgumentError, command: str, argv: list[str]) -> str:
    text = str(err).strip()
    if "Problems parsing config" in text and (broken := _broken_yaml(argv)):
        text = broken
    hint = (
        f" Every valid key, with its documentation: `xpert {command} --config <your yaml> --print_config=comments` "
        f"(or `xpert {command} --help`)."
    )
    match = re.search(r'Parser key "([^"]+)"', text)
    key = re.sub(r"\.init_args$", "", match.group(1)) if match else ""
    key = re.sub(r"\.\d+$", "", key)
    if (unwrapped := _type_error(text)) is not None:
        return f"{unwrapped}\n{hint.strip()}"
    if (moved := _moved_transfer_option(text, key)) is not None:
        return f"{moved}\n{hint.strip()}"
    owner = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*Option '([^']+)' is not accepted", text)
    if owner is not None and key:  # a known class, an argument it does not have (a typo, or another class's)
        problem = f"--{key}.init_args.{owner.group(2)}: {owner.group(1)} has no argument '{owner.group(2)}'."
        return f"{problem}\n{hint.strip()}"
    if "class_path" in text or "import path" in text.lower():
        problem = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)
        missing = problem and re.search(r"has no attribute|No module named|not a subclass", problem.group(2))
        if missing and key:  # the class itself is unknown; other class_path problems keep jsonargparse's detail
            text = f"{key}: cannot use class '{problem.group(1)}' ({problem.group(2).strip()})."
        valid = valid_class_paths(key)
        if valid:
            hint = f" Valid classes for {key}: {', '.join(valid)}." + hint
    return f"{text}\n{hint.strip()}"


def _moved_transfer_option(text: str, key: str) -> str | None:
    """The new spelling of an adaptation option given directly to an initializer (before they were nested)."""
    option = re.search(r"Option '(\w+)' is not accepted", text)
    if option is None or key != "model.initializer":
        return None
    from dataclasses import fields

    from xpert_pl.initializers.transfer import FFNTransfer

    name = option.group(1)
    if name not in {f.name for f in fields(FFNTransfer)}:
        return None
    return (
        f"--{key}.init_args.{name}: the adaptation options are one nested argument, `transfer` (FFNTransfer): write "
        f"`transfer: {{{name}: ...}}` under init_args in YAML, or --{key}.init_args.transfer.{name}=... ."
    )


def _type_error(text: str) -> str | None:
    """jsonargparse's nested 'does not validate' report of a value of the wrong type, as one sentence."""
    keys = re.findall(r'Parser key "([^"]+)"', text)
    expected = re.search(r"Expected an? (.+?)\. Got value: (.*)", text)
    if not keys or expected is None:
        return None
    owner = re.search(r"Problem with given class_path '([^']+)'", text)
    key = f"{keys[0]}.init_args.{keys[-1]}" if owner and len(keys) > 1 else keys[0]
    where = f" (an argument of {owner.group(1)})" if owner else ""
    return f"--{key}{where}: expected {_type_words(expected.group(1))}, got '{expected.group(2).strip()}'."


def _type_words(spec: str) -> str:
    """'<class 'int'>' -> 'an int'; "typing.Literal['a', 'b']" -> "one of 'a', 'b'"; anything else as it is."""
    if literal := re.fullmatch(r"typing\.Literal\[(.*)\]", spec):
        return f"one of {literal.group(1)}"
    if plain := re.fullmatch(r"<class '([\w.]+)'>", spec):
        name = plain.group(1).rsplit(".", 1)[-1]
        return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
    return spec


def _unpickling_error(err: pickle.UnpicklingError, argv: list[str]) -> str:
    named = [a.split("=", 1)[1] for a in argv if a.startswith(("--ckpt_path=", "--model.init_checkpoint="))]
    where = f" ({', '.join(named)})" if named else ""
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"refused to load a checkpoint{where}: it holds pickled Python objects beyond tensors and plain data, "
        f"which could run code when loaded ({first_line}). Checkpoints are loaded with torch.load(weights_only=True). "
        "If you made this file yourself and trust it, pass --weights_only=false (resuming) or re-export it as "
        "safetensors (warm start)."
    )


def run_reporting_errors(step: Callable[[], Any], command: str) -> Any:
    """Run a pipeline step as `xpert <command>` would: a user error prints its one paragraph to stderr and exits
    with status 2; a bug keeps its traceback."""
    try:
        return step()
    except Exception as err:
        if not report(err, command, [], sys.stderr):
            raise
        raise SystemExit(2) from None


def report(err: BaseException, command: str, argv: list[str], stream) -> bool:
    """Print the message for `err` to `stream` and return True, or return False if it is not a user error."""
    message = explain(err, command, argv)
    if message is None:
        return False
    print(f"xpert {command}: error: {message}\n{_DEBUG_HINT}", file=stream)
    return True
