"""Checkpoints that are never partial, a checkpoint on Ctrl-C / SIGTERM, and the checks of `--ckpt_path` made
before a run starts (exists, loads, fits the model)."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from xpert_pl.artifacts import normal_permissions, plain_json
from xpert_pl.layout import last_checkpoint

log = logging.getLogger(__name__)

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary sibling, flushes it to disk, then renames it into place.

    A full disk or a kill while writing leaves the previous checkpoint of that name untouched and no partial file
    where `--ckpt_path last` would pick it up.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            normal_permissions(tmp)  # mkstemp makes it owner-only
            os.replace(tmp, path)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _is_interrupt(exception: BaseException) -> bool:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(exception, KeyboardInterrupt | SIGTERMException)


class InterruptCheckpoint(L.Callback):
    """On Ctrl-C or SIGTERM during fit, saves `last.ckpt` beside the run's periodic checkpoints and prints the
    command that resumes from it (single process; a multi-process run resumes from its last periodic one)."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not _is_interrupt(exception) or not trainer.is_global_zero:
            return
        command = resume_command(sys.argv)
        directory = _checkpoint_dir(trainer)
        if trainer.world_size == 1 and trainer.global_step > 0 and directory is not None:
            path = directory / LAST
            _record_as_last(trainer, path)
            try:
                trainer.save_checkpoint(path)
            except Exception as err:  # the interrupt is what the user sees; a failed save must not hide it
                print(f"xpert fit: interrupted; could not save a checkpoint ({err})", file=sys.stderr)
                return
            print(f"xpert fit: interrupted at step {trainer.global_step}; saved {path}.", file=sys.stderr)
        else:
            print("xpert fit: interrupted; the last periodic checkpoint (if any) is kept.", file=sys.stderr)
        print(f"Resume with: {command}", file=sys.stderr)


def _record_as_last(trainer: L.Trainer, path: Path) -> None:
    """Make `path` the checkpoint callback's own `last` (saved in its state), as Lightning does before its saves.

    Without it a run interrupted before its first periodic save resumes with no `last_model_path`, finds
    `last.ckpt` taken, and writes every later save to `last-v1.ckpt` beside it.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.save_last:
        callback.last_model_path = str(path)


def _checkpoint_dir(trainer: L.Trainer) -> Path | None:
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    return Path(dirpath) if dirpath else None


def resume_command(argv: list[str]) -> str:
    """The `xpert` command line of this run with `--ckpt_path last` (and without --overwrite or another ckpt)."""
    keep = [a for a in argv[1:] if not a.startswith(("--ckpt_path", "--overwrite"))]
    return shlex.join(["xpert", *keep, "--ckpt_path", "last"])


def checkpoint_problems(
    ckpt_path: str | None,
    directory: Path | None,
    model: torch.nn.Module | None,
    weights_only: bool,
    hparams: dict[str, Any] | None = None,
) -> list[str]:
    """Why `--ckpt_path` cannot resume this run: no checkpoint for `last`, a missing, corrupt or foreign file, or one
    saved with other hyperparameters.

    `model` (built on the meta device, or None to skip) is compared key by key and shape by shape; `hparams` (the
    LightningModule's, as this run's config gives them; None to skip) value by value.
    """
    if ckpt_path is None:
        return []
    path = last_checkpoint(directory) if ckpt_path == "last" else Path(ckpt_path)
    if path is None:
        return [
            f"--ckpt_path last: there is no checkpoint to resume in '{directory}'; drop --ckpt_path to start a new "
            "run, or give the checkpoint file"
        ]
    if not path.is_file():
        return [f"--ckpt_path '{ckpt_path}' does not exist; give a .ckpt file of this run, or 'last'"]
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except (RuntimeError, EOFError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return [f"--ckpt_path '{path}' is corrupt or truncated ({reason}); resume from an earlier checkpoint"]
    return _state_problems(path, checkpoint, model) or _hparam_problems(path, checkpoint, hparams)


# How a run executes, not what it computes: free to change when a run resumes (e.g. on another machine).
EXECUTION_HPARAMS = frozenset({"compile", "_instantiator"})


def _hparam_problems(path: Path, checkpoint: dict, hparams: dict[str, Any] | None) -> list[str]:
    """The LightningModule's hyperparameters that differ between the checkpoint and this run's config: a resumed run
    keeps the ones it started with, so a changed learning rate or schedule would silently be neither."""
    saved = checkpoint.get("hyper_parameters")
    if hparams is None or not isinstance(saved, dict):
        return []
    given, saved = plain_json(dict(hparams)), plain_json(dict(saved))
    differ = sorted(k for k in given.keys() & saved.keys() - EXECUTION_HPARAMS if given[k] != saved[k])
    if not differ:
        return []
    details = "; ".join(f"model.{k}: {saved[k]!r} in the checkpoint, {given[k]!r} here" for k in differ)
    return [
        f"--ckpt_path '{path}' was saved with other hyperparameters ({details}); a resumed run keeps the ones it "
        "started with. Resume with the config that made it, or start a new run from its weights with "
        "--model.init_checkpoint instead of --ckpt_path"
    ]


def _state_problems(path: Path, checkpoint: Any, model: torch.nn.Module | None) -> list[str]:
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        return [f"--ckpt_path '{path}' is not a Lightning checkpoint of `xpert fit` (no state_dict)"]
    if model is None:
        return []
    expected = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items() if k.startswith("model.")}
    differ = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if not (differ or missing or unexpected):
        return []
    details = [f"{k}: {found[k]} in the checkpoint, {expected[k]} here" for k in differ[:3]]
    details += [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
    return [
        f"--ckpt_path '{path}' was saved from another model ({'; '.join(details)}); resume with the config that "
        "made it, or start a new run without --ckpt_path"
    ]
