"""Where an experiment's artifacts live: `RunLayout` owns every path of a runs folder, and `Artifact` names the
kinds of artifact a pluggable class (initializer, objective) reads, so the pipeline hands each its files.

Layout of a runs folder (`xpert bench run`'s `out_dir`, read by `xpert report`):

    matrix.yaml                                   the matrix as given
    shared/tokenizer/ cache/                      the tokenizer trained on the corpus, tokenised-data cache
    shared/source/ (hf/)                          the source MoE's run and its export
    shared/unigram.json                           a unigram model's validation loss per domain (the floor)
    shared/analysis/ bank/                        routing counts + selection, XPERT's knowledge bank
    shared/banks/<method>/                        a control's own bank (e.g. random or rare experts), built once
    shared/lr_sweep.json, lr_sweep/<method>/lr<r>/  the learning-rate sweep (when the matrix has one)
    shared/untrained/{hf,analysis,bank}/          the same procedure on an untrained copy of the source
    shared/wall_s.json, stage_settings.json       each shared stage's seconds, and the settings it was made with
    cells/<scale>/<budget>/<method>/seed<k>/      one pre-training run each (cell.json, metrics.csv, hf/, sft/)
    report/                                       `xpert report`'s output
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

# The files by which the steps recognise each other's finished output.
SELECTION_FILE = "selection.json"
COUNTS_FILE = "counts.json"
BANK_MANIFEST_FILE = "manifest.json"
HF_DIR = "hf"
HF_CONFIG_FILE = "config.json"
CELL_FILE = "cell.json"
METRICS_FILE = "metrics.csv"
UNTRAINED_MARKER = "untrained.json"
CHECKPOINT_DIR = "checkpoints"
SHARED_DIR = "shared"
"""A runs folder's stages shared by every cell; another matrix may reuse them by path (`<out_dir>/shared/...`)."""


def last_checkpoint(directory: Path | None) -> Path | None:
    """The newest `*last*.ckpt` in `directory` (what Lightning's `ckpt_path="last"` resumes from), else None.

    Newest, not `last.ckpt` by name: a run whose periodic saves went to `last-v1.ckpt` resumes from the latest one.
    """
    if directory is None or not directory.is_dir():
        return None
    found = [p for p in directory.iterdir() if p.suffix == ".ckpt" and "last" in p.name and p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def last_validation(metrics_csv: Path) -> dict[str, float]:
    """The last logged value of every `val/*` column of a CSVLogger metrics file ({} when there is none)."""
    import csv

    final: dict[str, float] = {}
    if metrics_csv.is_file():
        with metrics_csv.open(newline="") as fh:
            for row in csv.DictReader(fh):
                final |= {k: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)}
    return final


def run_last_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a training run in `run_dir` resumes from (None when it has saved none)."""
    return last_checkpoint(run_dir / CHECKPOINT_DIR)


class Artifact(str, Enum):
    """A kind of artifact a pluggable class can read; `RunLayout.path` gives its place in a runs folder."""

    SOURCE = "source"
    """The source MoE as a Hugging Face directory."""
    ANALYSIS = "analysis"
    """The analysis folder of the source (routing counts and XPERT's selection)."""
    SELECTION = "selection"
    """XPERT's selection file."""
    BANK = "bank"
    """XPERT's knowledge bank."""
    UNTRAINED_BANK = "untrained_bank"
    """The bank built the same way from an untrained copy of the source."""
    CONTROL_BANK = "control_bank"
    """The bank a control builds with its own selection (one per method, built once by the pipeline)."""


@dataclass(frozen=True)
class RunLayout:
    """Every artifact path of one experiment (a runs folder).

    Attributes:
        root: the runs folder.
        source_hf: the source MoE, when it was trained elsewhere (None: the one this experiment trains).
    """

    root: Path
    source_hf_given: Path | None = None

    @property
    def shared(self) -> Path:
        return self.root / SHARED_DIR

    @property
    def tokenizer(self) -> Path:
        return self.shared / "tokenizer"

    @property
    def cache(self) -> Path:
        return self.shared / "cache"

    @property
    def source_run(self) -> Path:
        """The source's training run (its metrics.csv; the export under `hf/`)."""
        return self.shared / "source"

    @property
    def source_hf(self) -> Path:
        return self.source_hf_given or self.source_run / HF_DIR

    @property
    def unigram(self) -> Path:
        """A unigram model's validation loss per domain (the floor the source is read against)."""
        return self.shared / "unigram.json"

    @property
    def wall_times(self) -> Path:
        """Seconds each shared stage and learning-rate sweep run took, summed over reruns."""
        return self.shared / "wall_s.json"

    @property
    def stage_settings(self) -> Path:
        """The settings each shared stage was made with: a rerun with other settings is refused, not mixed."""
        return self.shared / "stage_settings.json"

    @property
    def analysis(self) -> Path:
        return self.shared / "analysis"

    @property
    def selection(self) -> Path:
        return self.analysis / SELECTION_FILE

    @property
    def bank(self) -> Path:
        return self.shared / "bank"

    @property
    def untrained(self) -> Path:
        """Root of the untrained control's pipeline: `hf/`, `analysis/`, `bank/`."""
        return self.shared / "untrained"

    @property
    def untrained_bank(self) -> Path:
        return self.untrained / "bank"

    @property
    def lr_sweep(self) -> Path:
        """The learning-rate sweep's record (rates, final losses per method, the chosen rate)."""
        return self.shared / "lr_sweep.json"

    def lr_sweep_run(self, method: str, rate: float) -> Path:
        return self.shared / "lr_sweep" / method / f"lr{rate:g}"

    def control_bank(self, method: str) -> Path:
        return self.shared / "banks" / method

    @property
    def matrix_file(self) -> Path:
        return self.root / "matrix.yaml"

    @property
    def cells(self) -> Path:
        return self.root / "cells"

    def cell(self, scale: str, budget: str, method: str, seed: int) -> Path:
        return self.cells / scale / budget / method / f"seed{seed}"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def path(self, artifact: Artifact, method: str | None = None) -> Path:
        """Where `artifact` is (a control bank belongs to `method`)."""
        if artifact is Artifact.CONTROL_BANK:
            if method is None:
                raise ValueError("a control bank belongs to a method: give `method`")
            return self.control_bank(method)
        return {
            Artifact.SOURCE: self.source_hf,
            Artifact.ANALYSIS: self.analysis,
            Artifact.SELECTION: self.selection,
            Artifact.BANK: self.bank,
            Artifact.UNTRAINED_BANK: self.untrained_bank,
        }[artifact]


def bank_manifest(bank: Path) -> Path:
    return bank / BANK_MANIFEST_FILE


def hf_config(hf_dir: Path) -> Path:
    return hf_dir / HF_CONFIG_FILE


def sweep_wall_key(method: str, rate: float) -> str:
    """A sweep run's entry in `shared/wall_s.json`; the report charges it to the cell copied from that run."""
    return f"lr sweep: {method} at {rate:g}"
