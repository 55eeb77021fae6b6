"""Cell processes forked from a server that has imported the kit once, all on the version of the kit it imported.

On a 2-core VM a new interpreter spends 10-20 s importing Lightning and transformers, which every cell of a matrix
would otherwise pay again; multiprocessing's forkserver imports `PRELOAD` once and forks each cell from it. A cell
process still imports, from disk, any kit module the server had not (its call's own module first). So if the kit's
sources change while a bench runs (an edit, a `git pull`), a cell would mix the server's old modules with new ones:
it fails on a missing name, or runs a mixture of two versions. `check_kit_unchanged` records the kit's sources when
a bench starts (before its shared stages, whose artifacts the cells read) and `run_forked` refuses to fork a cell once
they differ. The report package is left out: no cell imports it, and reading partial results while a bench runs is
normal.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from xpert_pl.errors import ConfigError

log = logging.getLogger(__name__)

# Imported once by the fork server, so each cell process starts with them loaded.
PRELOAD = [
    "xpert_pl.pipeline.training",
    "xpert_pl.training.lightning_cli",
    "xpert_pl.training",
    "xpert_pl.data",
    "xpert_pl.initializers",
    "xpert_pl.callbacks",
]
NOT_CELL_CODE = ("report",)
"""Subpackages of `xpert_pl` no cell imports (the import-linter layers put them above the bench runner)."""
_server_sources: dict[str, str] | None = None
"""`kit_sources()` when this process started its bench; the fork server lives as long as the process."""


def kit_sources(roots: Iterable[Path] | None = None) -> dict[str, str]:
    """SHA-256 of every `.py` file the kit's cells may import (`xpert_pl` but `NOT_CELL_CODE`, and
    `xpert_pl.callbacks`, wherever installed), by path relative to the folder above its package. Editors' hidden files
    (`.#x.py` locks) are skipped; a file that vanishes while it is read counts as removed."""
    if roots is None:
        specs = [importlib.util.find_spec(name) for name in ("xpert_pl", "xpert_pl.callbacks")]
        roots = [Path(p) for spec in specs for p in spec.submodule_search_locations]
    hashes = {}
    for root in map(Path, roots):
        for file in sorted(root.rglob("*.py")):
            relative = file.relative_to(root)
            if relative.parts[0] in NOT_CELL_CODE or any(part.startswith(".") for part in relative.parts):
                continue
            try:
                hashes[str(root.name / relative)] = hashlib.sha256(file.read_bytes()).hexdigest()
            except OSError:
                continue
    return hashes


def check_kit_unchanged() -> None:
    """Record the kit's sources on the first call (a bench's start); on later calls (each cell) raise `ConfigError`
    if they changed since."""
    global _server_sources
    now = kit_sources()
    if _server_sources is None:
        _server_sources = now
        return
    changed = sorted({f for f in now.keys() | _server_sources.keys() if now.get(f) != _server_sources.get(f)})
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        problem = (
            f"the kit's source files changed while this bench ran ({shown}): a cell started now would mix the kit "
            "this bench started with and the new one, so no further cell was started. Run the same `xpert bench run` "
            "command again (a new process, on the new kit): it resumes where this one stopped (finished cells are "
            "kept, interrupted ones resume from their checkpoints)"
        )
        log.error("[bench] %s", problem)
        raise ConfigError([problem])


def cell_threads(jobs: int) -> int | None:
    """Torch threads per cell when `jobs` cells train at once: this process's torch threads (its default, or
    `OMP_NUM_THREADS`) shared out, at least 1; None for one cell at a time (that default).

    Two 1-thread cells beside each other train about 1.13x the tokens per second of one 2-thread cell on a 2-core CPU
    (`benchmarks/cpu_parallel_cells.py`): the tiny students' matrices are too small to keep two threads busy.
    """
    if jobs <= 1:
        return None
    import torch

    return max(1, torch.get_num_threads() // jobs)


def _run_in_child(call: Callable[[], None], log_file: str, threads: int | None = None) -> None:
    """Body of a forked cell process: stdout and stderr appended to `log_file`, torch limited to `threads` (None:
    its default), then the call; a user error prints its one paragraph and exits 2, as `xpert fit` does."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        print(f"[bench] torch threads in this cell: {threads}", flush=True)
    from xpert_pl.cli_errors import run_reporting_errors

    run_reporting_errors(call, "fit")


def run_forked(call: Callable[[], None], log_file: Path, threads: int | None = None) -> int:
    """Run `call` (picklable) in a process forked from a server that has already imported the kit (multiprocessing's
    forkserver: a clean process, never one that has trained or used threads), its output appended to `log_file`,
    with `threads` torch threads (None: torch's default; see `cell_threads`). Exit status as a subprocess's: 0, the
    `SystemExit` code, 1 for an uncaught error, -N for signal N. Raises `ConfigError` when the kit's sources changed
    since the first call (see the module's docstring)."""
    check_kit_unchanged()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    process = context.Process(target=_run_in_child, args=(call, str(log_file), threads))
    process.start()
    process.join()
    return process.exitcode
