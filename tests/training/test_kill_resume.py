"""A pre-training run killed with SIGKILL and resumed with `--ckpt_path last` ends exactly where an uninterrupted
run with the same seed ends (same final validation loss, weights and logged history on CPU): the data order
continues, and metrics.csv keeps the rows from before the kill."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file
from safety_checks import tiny_fit_args

REPO = Path(__file__).resolve().parents[2]
STEPS, CHECKPOINT_EVERY = 16, 4


def _config(tmp_path: Path, kill_at: int | None) -> Path:
    config = yaml.safe_load((REPO / "configs" / "pretrain" / "tiny.yaml").read_text())
    config["trainer"].update(max_steps=STEPS, val_check_interval=8, log_every_n_steps=1, enable_progress_bar=False)
    (checkpoint,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    checkpoint["init_args"]["every_n_train_steps"] = CHECKPOINT_EVERY
    if kill_at is not None:
        config["trainer"]["callbacks"].append({"class_path": "kill_switch.KillAtStep", "init_args": {"step": kill_at}})
    path = tmp_path / f"config_{kill_at}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, run_dir: Path, data_root: Path, tokenizer: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "xpert_pl.cli", *tiny_fit_args(config, run_dir, data_root, tokenizer, *extra)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO)])}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _losses(run_dir: Path) -> list[tuple[int, str, str]]:
    """Every logged (step, train loss, validation loss) of a run's metrics.csv, in order."""
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return [(int(r["step"]), r["train/loss"], r["val/loss"]) for r in rows]


def _final_val_loss(run_dir: Path) -> tuple[int, float]:
    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get("val/loss")]
    return int(rows[-1]["step"]), float(rows[-1]["val/loss"])


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_data_root, tiny_tokenizer_dir, tmp_path):
    kill_at = random.Random(7).choice([s for s in range(CHECKPOINT_EVERY + 1, STEPS) if s % CHECKPOINT_EVERY])
    args = (tiny_data_root, tiny_tokenizer_dir)
    full = _fit(_config(tmp_path, None), tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr[-3000:]

    killed = _fit(_config(tmp_path, kill_at), tmp_path / "killed", *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert last.is_file() and not (tmp_path / "killed" / "hf").exists()

    resumed = _fit(_config(tmp_path, None), tmp_path / "killed", *args, f"--ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "before the epoch ended" not in resumed.stderr  # Lightning's warning when a loader cannot resume

    step, loss = _final_val_loss(tmp_path / "full")
    assert step == STEPS - 1
    assert _final_val_loss(tmp_path / "killed") == (step, loss)  # exactly, on CPU
    # The resumed run's metrics.csv holds the part before the kill too (up to its checkpoint), not only what follows.
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")
    assert not (tmp_path / "killed" / ".metrics-before-resume.csv").exists()
    a, b = (load_file(tmp_path / run / "hf" / "model.safetensors") for run in ("full", "killed"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
