"""Where data and configs live: the data root (XPERT_DATA_ROOT), a small catalog of named datasets under it, and the
shipped config YAMLs."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DATA_ROOT_ENV = "XPERT_DATA_ROOT"


class DataRootError(FileNotFoundError):
    """The data root or a file a config names under it is missing."""


# Names from configs and data that become file or directory names (domains, matrix cells, units): one plain path
# component, so no name can reach outside the directory it is written into ("..", "/", "~", absolute paths).
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def path_component_problem(name: object, what: str) -> str | None:
    """None if `name` is safe as one file-name component, else the problem and the rule."""
    if isinstance(name, str) and _PATH_COMPONENT.fullmatch(name) and ".." not in name:
        return None
    return (
        f"{what} {name!r} cannot name a file or directory: use letters, digits, '.', '_' and '-' (starting with a "
        "letter or digit, no '..'), so that nothing is written outside the run directory"
    )


def default_data_root() -> Path | None:
    """`../shared/data` next to the repository or the working directory, when it exists."""
    candidates = [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" / "data"]
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    return None


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: an explicit path, else $XPERT_DATA_ROOT, else ../shared/data when it exists."""
    chosen = explicit or os.environ.get(DATA_ROOT_ENV)
    root = Path(chosen).expanduser() if chosen else default_data_root()
    if root is None or not root.is_dir():
        where = f"'{root}'" if root is not None else "no default (../shared/data does not exist)"
        raise DataRootError(
            f"data root not found: {where}. Set {DATA_ROOT_ENV}=/path/to/data (the layout of shared/data: corpus/, "
            f"eval/, sft/) or pass data_root explicitly."
        )
    return root.resolve()


@dataclass(frozen=True)
class CatalogEntry:
    """A named dataset: a path pattern under the data root and the Hugging Face id an online user can use."""

    relative: str
    hub_id: str | None
    description: str


CATALOG: dict[str, CatalogEntry] = {
    "corpus": CatalogEntry(
        "corpus", None, "multi-domain pre-training text, one jsonl per source under corpus/<domain>/"
    ),
    "dolly": CatalogEntry("sft/dolly", "databricks/databricks-dolly-15k", "instruction tuning (train/dev jsonl)"),
    "superni": CatalogEntry("sft/superni", "Muennighoff/natural-instructions", "Super-NaturalInstructions tasks"),
    "boolq": CatalogEntry("eval/boolq", "google/boolq", "BoolQ validation"),
    "piqa": CatalogEntry("eval/piqa", "ybisk/piqa", "PIQA validation"),
    "winogrande": CatalogEntry("eval/winogrande", "allenai/winogrande", "WinoGrande 1.1 dev"),
    "hellaswag": CatalogEntry("eval/hellaswag", "Rowan/hellaswag", "HellaSwag validation"),
    "mmlu": CatalogEntry("eval/mmlu", "cais/mmlu", "MMLU test + dev"),
    "dollyeval": CatalogEntry("eval/dollyeval", None, "DollyEval (MiniLLM prompts)"),
}


def catalog_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Path of a catalog dataset under the data root, with a clear error for unknown names or missing files."""
    if name not in CATALOG:
        raise KeyError(f"unknown dataset '{name}'; known: {', '.join(sorted(CATALOG))}")
    path = data_root(root) / CATALOG[name].relative
    if not path.exists():
        raise DataRootError(f"dataset '{name}' expected at {path}, which does not exist; check {DATA_ROOT_ENV}.")
    return path


def corpus_domains(root: str | os.PathLike | None = None) -> dict[str, list[Path]]:
    """Domains of the corpus (sub-directories of corpus/) and their jsonl files, sorted for determinism."""
    base = catalog_path("corpus", root)
    domains = {d.name: sorted(d.glob("*.jsonl")) for d in sorted(base.iterdir()) if d.is_dir()}
    return {name: files for name, files in domains.items() if files}


def config_dir() -> Path:
    """The shipped configs folder: `xpert_pl/configs` in an installed wheel, else the repository's `configs/`."""
    here = Path(__file__).resolve().parent
    installed = here / "configs"  # the wheel maps the repository's top-level configs/ to xpert_pl.configs
    return installed if installed.is_dir() else here.parent / "configs"


def shown_path(path: Path) -> Path:
    """`path` as a committed record may show it: relative to the working directory, or for a shipped config
    `configs/...`; otherwise as given."""
    for base, prefix in ((Path.cwd(), Path()), (config_dir(), Path("configs"))):
        if path.is_absolute() and path.is_relative_to(base):
            return prefix / path.relative_to(base)
    return path


def shipped_configs(root: Path | None = None) -> list[tuple[str, str]]:
    """(path relative to the configs folder, first comment line) of every config YAML, sorted by path."""
    root = root or config_dir()
    found = []
    for path in sorted(root.rglob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        first = next((line.lstrip("# ").rstrip() for line in lines[:1] if line.startswith("#")), "")
        found.append((path.relative_to(root).as_posix(), first))
    return found


def list_configs() -> None:
    """List the shipped config YAMLs with the command that runs each (their first comment line).

    Names are relative to the configs folder printed first; pass `--config <folder>/<name>` when not running from
    the repository.
    """
    root = config_dir()
    configs = shipped_configs(root)
    width = max((len(name) for name, _ in configs), default=0)
    print(f"shipped configs in {root}:")
    for name, command in configs:
        print(f"  {name:<{width}}  {command}")
