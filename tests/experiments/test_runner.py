"""MatrixRunner: finished cells are skipped, interrupted ones resume, failures are recorded; a real tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from xpert_pl.experiments.matrix import load_matrix
from xpert_pl.experiments.runner import XPERT, MatrixRunner, artifact_overrides, run_forked

REPO = Path(__file__).resolve().parents[2]


def write_matrix(
    tmp_path: Path, data_root: Path, tokenizer: Path, source: Path, methods: list[str], budgets: dict | None = None
) -> Path:
    spec = {
        "out_dir": str(tmp_path / "bench"),
        "data": {"data_root": str(data_root), "tokenizer": str(tokenizer), "block_size": 32, "batch_size": 4},
        "source": {"hf": str(source)},
        "analyze": "configs/analyze/tiny.yaml",
        "extract": "configs/extract/tiny.yaml",
        "scales": {"2l": {"config": "configs/pretrain/tiny.yaml"}},
        "budgets": budgets or {"short": 2, "long": 4},
        "seeds": [0],
        "methods": {m: f"configs/methods/{m}.yaml" for m in methods},
        "sweep_methods": ["scratch"],
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class FakeLauncher:
    """Records commands; exits with `status` and writes the marker a successful fit would leave."""

    def __init__(self, status: int = 0):
        self.status, self.commands = status, []

    def __call__(self, command: list[str], log_file: Path) -> int:
        self.commands.append(command)
        save_dir = next(a.split("=", 1)[1] for a in command if a.startswith("--trainer.logger.init_args.save_dir="))
        if self.status == 0:
            (Path(save_dir) / "hf").mkdir(parents=True, exist_ok=True)
            (Path(save_dir) / "hf" / "config.json").write_text("{}")
        return self.status


@pytest.fixture
def runner(tmp_path, tiny_data_root, tiny_tokenizer_dir, tiny_source_dir):
    path = write_matrix(tmp_path, tiny_data_root, tiny_tokenizer_dir, tiny_source_dir, ["scratch", "xpert"])
    return MatrixRunner(load_matrix(path, root=REPO), launch=FakeLauncher())


def test_finished_cells_are_skipped_and_interrupted_ones_resume(runner):
    done, interrupted, fresh = runner.matrix.cells()[:3]
    done_dir = done.directory(runner.matrix.out_dir)
    done_dir.mkdir(parents=True)
    (done_dir / "cell.json").write_text(json.dumps({"status": "done"}))
    last = interrupted.directory(runner.matrix.out_dir) / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert [runner.run_cell(c) for c in (done, interrupted, fresh)] == ["skipped", "done", "done"]
    resumed, started = runner.launch.commands
    assert resumed[-1] == f"--ckpt_path={last}" and not any(a.startswith("--ckpt_path") for a in started)
    record = json.loads((fresh.directory(runner.matrix.out_dir) / "cell.json").read_text())
    assert record["status"] == "done" and record["method"] == fresh.method and record["steps"] == fresh.steps
    assert runner.run_cell(fresh) == "skipped" and len(runner.launch.commands) == 2


def test_a_failed_cell_is_recorded_and_rerun_later(runner):
    runner.launch = FakeLauncher(status=1)
    cell = runner.matrix.cells()[0]
    assert runner.run_cell(cell) == "failed"
    record = json.loads((cell.directory(runner.matrix.out_dir) / "cell.json").read_text())
    assert record["status"] == "failed" and record["failed_stage"] == "pretrain"
    runner.launch = FakeLauncher(status=0)
    assert runner.run_cell(cell) == "done"


def test_commands_point_methods_at_the_shared_artifacts(runner):
    xpert = next(c for c in runner.matrix.cells() if c.method == "xpert")
    command = runner.pretrain_command(xpert)
    assert f"--model.initializer.init_args.bank={runner.shared / 'bank'}" in command
    assert "--seed_everything=0" in command and "--data.init_args.seed=0" in command
    assert f"--trainer.max_steps={xpert.steps}" in command
    overrides = artifact_overrides(REPO / "configs" / "methods" / "xpert_attention.yaml", runner.artifacts())
    assert overrides == [
        f"--model.initializer.init_args.base.init_args.bank={runner.shared / 'bank'}",
        f"--model.initializer.init_args.source={runner.matrix.source_hf}",
    ]


def test_the_untrained_source_stages_run_only_when_a_method_needs_them(runner, tmp_path):
    assert not runner.uses_artifact("untrained_bank")
    runner.matrix.methods["untrained_source"] = REPO / "configs" / "methods" / "untrained_source.yaml"
    assert runner.uses_artifact("untrained_bank")
    cell = next(c for c in runner.matrix.cells() if c.method == "scratch")
    control = type(cell)(cell.scale, cell.budget, "untrained_source", cell.seed, cell.steps)
    override = f"--model.initializer.init_args.untrained_bank={runner.shared / 'untrained' / 'bank'}"
    assert override in runner.pretrain_command(control)


def test_a_real_tiny_matrix_runs_then_skips_everything(tmp_path, tiny_data_root, tiny_tokenizer_dir, tiny_source_dir):
    methods = ["scratch", "xpert"]
    path = write_matrix(tmp_path, tiny_data_root, tiny_tokenizer_dir, tiny_source_dir, methods, {"only": 3})
    runner = MatrixRunner(load_matrix(path, root=REPO))
    assert runner.run(path) == {"done": 2}
    out = runner.matrix.out_dir
    assert (out / "matrix.yaml").read_text() == path.read_text()
    assert (out / "shared" / "bank" / "manifest.json").is_file()
    for cell in runner.matrix.cells():
        run_dir = cell.directory(out)
        record = json.loads((run_dir / "cell.json").read_text())
        assert record["status"] == "done" and record["tokens_budget"] == cell.steps * 4 * 32
        assert (run_dir / "metrics.csv").is_file() and (run_dir / "hf" / "config.json").is_file()
    init = json.loads((out / "cells/2l/only/xpert/seed0/init_report.json").read_text())
    assert init["initializer"] == "xpert" and init["details"]["bank"] == str(out / "shared" / "bank")
    assert runner.run(path) == {"skipped": 2}


def test_forked_xpert_commands_log_their_output_and_return_the_exit_status(tmp_path):
    log_file = tmp_path / "cell" / "run.log"
    assert run_forked([*XPERT, "bench", "run", str(tmp_path / "missing.yaml")], log_file) == 2
    assert "not found" in log_file.read_text()  # the child's stderr, appended to the log
    assert run_forked([*XPERT, "--help"], log_file) == 0
    assert "commands:" in log_file.read_text() and "not found" in log_file.read_text()
    assert run_forked([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "other.log") == 3  # not xpert


def test_the_tokenizer_is_trained_as_the_first_shared_stage(tmp_path, tiny_data_root, tiny_source_dir, monkeypatch):
    spec = yaml.safe_load(write_matrix(tmp_path, tiny_data_root, tmp_path, tiny_source_dir, ["scratch"]).read_text())
    del spec["data"]["tokenizer"]
    spec["tokenizer"] = {"vocab_size": 300, "max_chars_per_domain": 5000}
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(spec))
    runner = MatrixRunner(load_matrix(tmp_path / "matrix.yaml", root=REPO), launch=FakeLauncher())
    monkeypatch.setattr(MatrixRunner, "_analysis_and_bank", lambda *args: None)
    assert "tokenizer" in runner.run_shared()
    tokenizer = runner.shared / "tokenizer"
    assert runner.data_settings()["tokenizer"] == tokenizer
    meta = json.loads((tokenizer / "xpert_tokenizer.json").read_text())
    assert meta["settings"] == {"vocab_size": 300, "max_chars_per_domain": 5000}
    assert meta["domains"] == ["code", "law", "news"]
    assert "tokenizer_vocab_size" not in " ".join(runner.pretrain_command(runner.matrix.cells()[0]))
    assert runner.run_shared()["tokenizer"] == 0.0  # cached
