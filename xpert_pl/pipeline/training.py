"""Training steps as functions: `fit` (pre-train a model) and `fine_tune` (a warm start from a pre-trained one),
both from a configuration given as data (YAML files and typed overrides), with the checks of `xpert fit`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpert_pl.layout import CHECKPOINT_DIR, HF_DIR, METRICS_FILE, last_validation, run_last_checkpoint
from xpert_pl.pipeline.config import Config, load_config, merge, nested

ConfigSource = Mapping[str, Any] | Sequence[str | Path]


@dataclass(frozen=True)
class FitResult:
    """What a training run left in its run folder.

    Attributes:
        run_dir: the run folder (metrics.csv, config.yaml, checkpoints/).
        hf_dir: the exported Hugging Face model (None when the run has no HFExport callback).
        last_checkpoint: the newest `checkpoints/last*.ckpt` (None when none was saved).
        final_metrics: the last logged value of every `val/*` metric.
    """

    run_dir: Path
    hf_dir: Path | None
    last_checkpoint: Path | None
    final_metrics: dict[str, float]

    @classmethod
    def read(cls, run_dir: Path) -> FitResult:
        hf, final = run_dir / HF_DIR, last_validation(run_dir / METRICS_FILE)
        return cls(run_dir, hf if hf.is_dir() else None, run_last_checkpoint(run_dir), final)


def run_config(run_dir: Path) -> Config:
    """The configuration a run saved (`config.yaml`), {} when it has none."""
    import yaml

    config_file = run_dir / "config.yaml"
    return (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}


def tokens_per_step(config: Mapping[str, Any]) -> int | None:
    """Batch size x block size (x devices) of a fit configuration; None when it does not say."""
    data, trainer = config.get("data", {}).get("init_args", {}), config.get("trainer", {})
    devices = trainer.get("devices", 1)
    devices = devices if isinstance(devices, int) and devices > 0 else 1
    if "block_size" not in data or "batch_size" not in data:
        return None
    return int(data["batch_size"] * data["block_size"] * devices)


def fit_config(
    config: ConfigSource,
    run_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Config:
    """The whole `xpert fit` configuration of a run into `run_dir` (see `fit`)."""
    base = dict(config) if isinstance(config, Mapping) else load_config(config)
    run = {"trainer.logger.init_args.save_dir": str(run_dir), "overwrite": overwrite}
    if resume:
        last = run_last_checkpoint(Path(run_dir))
        run["ckpt_path"] = str(last or Path(run_dir) / CHECKPOINT_DIR / "last.ckpt")
    return merge(base, nested({**(overrides or {}), **run}))


def fit(
    config: ConfigSource,
    run_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> FitResult:
    """Train a model: `xpert fit` as a function (the same checks, run folder guard, checkpoints and export).

    Args:
        config: the configuration: YAML files merged in order (`--config a --config b`), or a dict of it.
        run_dir: the run folder (the logger's save_dir); a folder holding a finished run is refused unless
            `overwrite` (or `resume`).
        overrides: options laid over the configuration, by dotted name (`{"trainer.max_steps": 300}`).
        resume: continue the run from its newest `run_dir/checkpoints/last*.ckpt`.
        overwrite: replace a finished run in `run_dir` (kept aside until the new one completes).
    """
    from xpert_pl.training.lightning_cli import run_lightning_cli

    run_lightning_cli({"fit": fit_config(config, run_dir, overrides, resume, overwrite)})
    return FitResult.read(Path(run_dir))


def fine_tune(
    config: ConfigSource,
    pretrained: str | Path,
    run_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> FitResult:
    """Fine-tune (e.g. SFT on Dolly) a pre-trained model: a new run whose weights start from `pretrained` (a
    Hugging Face directory, e.g. `FitResult.hf_dir`, or a .ckpt); fresh optimizer and step. See `fit`."""
    warm = {**(overrides or {}), "model.init_checkpoint": str(pretrained)}
    return fit(config, run_dir, warm, overwrite=overwrite)


def fit_config_problems(config: Mapping[str, Any]) -> list[str]:
    """Why a fit configuration would be refused (types, class paths, values), found by parsing it: nothing is
    built, loaded or written."""
    from xpert_pl.cli_errors import explain
    from xpert_pl.training.lightning_cli import run_lightning_cli

    try:
        run_lightning_cli({"fit": dict(config)}, parse_only=True)
    except Exception as err:  # every parse or check failure is the user's to fix
        return [explain(err, "fit", []) or f"{type(err).__name__}: {err}"]
    return []
