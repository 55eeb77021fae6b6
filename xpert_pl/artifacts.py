"""Atomic writing of artifacts (safetensors + JSON manifests) so a killed run never leaves a partial file, and the
rule that an output directory is replaced only when it is an artifact of the same kind that the kit wrote.

Every artifact directory the kit writes holds `xpert_artifact.json` (`{"kind": ..., "version": ...}`); an existing
directory at an output path is replaced only when that marker names the same kind (or the directory is empty), and
only once the new directory is complete. Anything else (a user's folder, the working directory, a run folder given
as a bank's `out_dir`) is refused before any work starts. Files and directories get the permissions the umask
allows, as `open()` and `mkdir()` would give them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from xpert_pl.errors import ConfigError
from xpert_pl.layout import BANK_MANIFEST_FILE, COUNTS_FILE, SELECTION_FILE

ARTIFACT_FILE = "xpert_artifact.json"
# Kinds whose older directories predate the marker file: recognised by files only the kit writes together.
_LEGACY_MARKERS = {
    "analysis": (COUNTS_FILE, SELECTION_FILE),
    "bank": (BANK_MANIFEST_FILE, "bank.safetensors"),
    "hf-model": ("xpert_export.json", "config.json"),
    "tokenizer": ("xpert_tokenizer.json",),
    "untrained-source": ("untrained.json", "config.json"),
    "report": ("report.json", "report.md"),
    "bench": ("matrix.yaml",),
}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_permissions(path: str | os.PathLike) -> None:
    """Give `path` the mode `open()`/`mkdir()` would (0666/0777 less the umask): temporary files are owner-only."""
    path = Path(path)
    full = 0o777 if path.is_dir() else 0o666
    path.chmod(full & ~_umask())


def artifact_kind(path: str | os.PathLike) -> str | None:
    """The kind of kit artifact at `path` (from its marker, or a legacy kind's own file), else None."""
    path = Path(path)
    marker = path / ARTIFACT_FILE
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
        return kind if isinstance(kind, str) else None
    return next((kind for kind, names in _LEGACY_MARKERS.items() if all((path / n).is_file() for n in names)), None)


def replace_problem(path: str | os.PathLike, kind: str, option: str = "--out_dir") -> str | None:
    """Why an artifact of `kind` may not be written at `path` (None when it may: absent, empty, or same kind)."""
    path = Path(path).expanduser()
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return (
            f"{option} '{path}' is the working directory or one of its parents; the kit writes {_a(kind)} into a "
            "directory of its own: give a new path such as runs/<name>"
        )
    if path.exists() and not path.is_dir():
        return f"{option} '{path}' is a file, not a directory; give a new path for the {kind}"
    if not path.is_dir() or not any(path.iterdir()) or artifact_kind(path) == kind:
        return None
    found = artifact_kind(path)
    what = f"{_a(found)} the kit wrote" if found else f"not {_a(kind)} the kit wrote (no {ARTIFACT_FILE} of that kind)"
    return (
        f"{option} '{path}' already exists and is {what}; the kit replaces only its own {kind} there, so nothing "
        "was written. Give a new path, or move that directory away yourself"
    )


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def check_replaceable(path: str | os.PathLike, kind: str, option: str = "--out_dir") -> None:
    """Raise ConfigError (exit status 2) when an artifact of `kind` may not be written at `path`."""
    if (problem := replace_problem(path, kind, option)) is not None:
        raise ConfigError([problem])


def _can_write(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def writable_problem(path: str | os.PathLike, option: str = "--out_dir") -> str | None:
    """Why `path` (to be created, or replaced through a sibling) cannot be written, else None."""
    target = Path(path).expanduser().resolve()
    # A new path needs its nearest existing ancestor writable; an existing one its parent (the sibling lives there).
    directory = target.parent if target.exists() else next(p for p in target.parents if p.exists())
    if directory.is_dir() and _can_write(directory):
        return None
    return f"{option} '{path}': cannot write into '{directory}' (permission denied or read-only file system)"


def output_problems(out_dir: str, kind: str) -> list[str]:
    """Why an artifact of `kind` cannot be written at `out_dir` (not the kit's, not writable), checked up front."""
    problems = [replace_problem(out_dir, kind), writable_problem(out_dir)]
    return [p for p in problems if p is not None]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed onto `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        normal_permissions(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes the artifact `path` once the block succeeds.

    `path` must be absent, empty, or an artifact of the same `kind` (checked before and after the block); an old
    artifact is moved aside and removed only after the new one is in place.
    """
    path = Path(path)
    check_replaceable(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        write_json(tmp / ARTIFACT_FILE, {"kind": kind, "version": 1})
        for item in (tmp, *tmp.rglob("*")):
            normal_permissions(item)
        check_replaceable(path, kind)  # the block may have run for hours: look again
        _swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, path: Path) -> None:
    """Rename `new` onto `path`; an existing `path` (an empty directory or an old artifact) is removed afterwards."""
    if not path.exists():
        os.replace(new, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    old.rmdir()
    os.replace(path, old)
    try:
        os.replace(new, path)
    except OSError:
        os.replace(old, path)  # put the old artifact back: nothing is lost
        raise
    shutil.rmtree(old, ignore_errors=True)


def plain_json(value: Any) -> Any:
    """`value` as it reads back from JSON (paths as strings, tuples as lists), so a recorded setting and a given one
    compare equal."""
    return json.loads(json.dumps(value, default=str))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


class CorruptArtifactError(ValueError):
    """An artifact file exists but cannot be parsed (truncated, edited by hand, or not what its name says)."""


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; CorruptArtifactError (naming the file) if it is not valid UTF-8 JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptArtifactError(
            f"{path} is not valid JSON ({err}): the file is corrupt or truncated; re-create it with the step that "
            "wrote it"
        ) from err


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    """Save tensors as safetensors, atomically (tensors are made contiguous and moved to CPU)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle)."""
    return load_file(str(path))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
