"""MatrixRunner: finished cells are skipped, interrupted ones resume, failures are recorded; a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from xpert_pl.errors import ConfigError
from xpert_pl.experiments.matrix import load_matrix
from xpert_pl.experiments.runner import FitCall, MatrixRunner
from xpert_pl.layout import Artifact

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
    """Records the calls; exits with `status` and writes the marker a successful fit would leave."""

    def __init__(self, status: int = 0):
        self.status, self.calls = status, []

    def __call__(self, call: FitCall, log_file: Path) -> int:
        self.calls.append(call)
        if self.status == 0:
            (call.run_dir / "hf").mkdir(parents=True, exist_ok=True)
            (call.run_dir / "hf" / "config.json").write_text("{}")
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
    resumed, started = runner.launch.calls
    assert resumed.resume and not resumed.overwrite and not started.resume and started.overwrite
    record = json.loads((fresh.directory(runner.matrix.out_dir) / "cell.json").read_text())
    assert record["status"] == "done" and record["method"] == fresh.method and record["steps"] == fresh.steps
    assert runner.run_cell(fresh) == "skipped" and len(runner.launch.calls) == 2


def test_an_interrupted_cell_resumes_from_its_newest_last_checkpoint(runner):
    import os

    from xpert_pl.pipeline.training import fit_config

    cell = runner.matrix.cells()[0]
    checkpoints = cell.directory(runner.matrix.out_dir) / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last-v1.ckpt").write_bytes(b"")
    call = runner.pretrain_call(cell)
    assert call.resume and not call.overwrite  # a last-v1.ckpt alone is a checkpoint to resume, not a dead start
    (checkpoints / "last.ckpt").write_bytes(b"")
    os.utime(checkpoints / "last.ckpt", (1_000_000, 1_000_000))  # older than last-v1.ckpt
    resumed = fit_config(call.config, call.run_dir, resume=call.resume, overwrite=call.overwrite)
    assert resumed["ckpt_path"] == str(checkpoints / "last-v1.ckpt")


def test_a_failed_cell_is_recorded_and_rerun_later(runner):
    runner.launch = FakeLauncher(status=1)
    cell = runner.matrix.cells()[0]
    assert runner.run_cell(cell) == "failed"
    record = json.loads((cell.directory(runner.matrix.out_dir) / "cell.json").read_text())
    assert record["status"] == "failed" and record["failed_stage"] == "pretrain"
    runner.launch = FakeLauncher(status=0)
    assert runner.run_cell(cell) == "done"


def test_calls_point_methods_at_the_shared_artifacts(runner):
    xpert = next(c for c in runner.matrix.cells() if c.method == "xpert")
    call = runner.pretrain_call(xpert)
    assert call.config["model"]["initializer"]["init_args"]["bank"] == str(runner.layout.bank)
    assert call.config["seed_everything"] == 0 and call.config["data"]["init_args"]["seed"] == 0
    assert call.config["trainer"]["max_steps"] == xpert.steps
    assert call.run_dir == runner.layout.cell("2l", xpert.budget, "xpert", 0)
    runner.matrix.methods["xpert_attention"] = REPO / "configs" / "methods" / "xpert_attention.yaml"
    spec = runner.method_config("xpert_attention")["model"]["initializer"]
    assert spec["init_args"]["base"]["init_args"]["bank"] == str(runner.layout.bank)
    assert spec["init_args"]["source"] == str(runner.matrix.source_hf)


def test_every_artifact_argument_is_an_argument_of_its_class():
    import inspect

    import xpert_pl.initializers as initializers
    from xpert_pl.training import objectives

    classes = [getattr(initializers, n) for n in initializers.__all__] + [objectives.DistillationObjective]
    declared = [(cls, arg) for cls in classes for arg in getattr(cls, "artifacts", {})]
    assert len(declared) >= 15
    for cls, arg in declared:
        assert arg in inspect.signature(cls.__init__).parameters, f"{cls.__name__}.artifacts names '{arg}'"


def test_the_untrained_source_stages_run_only_when_a_method_needs_them(runner):
    assert not runner.needs(Artifact.UNTRAINED_BANK)
    runner.matrix.methods["untrained_source"] = REPO / "configs" / "methods" / "untrained_source.yaml"
    assert runner.needs(Artifact.UNTRAINED_BANK)
    cell = next(c for c in runner.matrix.cells() if c.method == "scratch")
    control = type(cell)(cell.scale, cell.budget, "untrained_source", cell.seed, cell.steps)
    init_args = runner.pretrain_call(control).config["model"]["initializer"]["init_args"]
    assert init_args["untrained_bank"] == str(runner.layout.untrained_bank)


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


def test_the_tokenizer_is_trained_as_the_first_shared_stage(tmp_path, tiny_data_root, tiny_source_dir, monkeypatch):
    spec = yaml.safe_load(write_matrix(tmp_path, tiny_data_root, tmp_path, tiny_source_dir, ["scratch"]).read_text())
    del spec["data"]["tokenizer"]
    spec["tokenizer"] = {"vocab_size": 300, "max_chars_per_domain": 5000}
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(spec))
    runner = MatrixRunner(load_matrix(tmp_path / "matrix.yaml", root=REPO), launch=FakeLauncher())
    monkeypatch.setattr(MatrixRunner, "_analysis_and_bank", lambda *args: None)
    assert "tokenizer" in runner.run_shared()
    tokenizer = runner.shared / "tokenizer"
    assert runner.data_settings()["tokenizer"] == str(tokenizer)
    meta = json.loads((tokenizer / "xpert_tokenizer.json").read_text())
    assert meta["settings"] == {"vocab_size": 300, "max_chars_per_domain": 5000}
    assert meta["domains"] == ["code", "law", "news"]
    assert "tokenizer_vocab_size" not in runner.pretrain_call(runner.matrix.cells()[0]).config["data"]["init_args"]
    assert runner.run_shared()["tokenizer"] == 0.0  # cached
    spec["tokenizer"]["vocab_size"] = 400  # the cached 300-token tokenizer was reused for it
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(spec))
    changed = MatrixRunner(load_matrix(tmp_path / "matrix.yaml", root=REPO), launch=FakeLauncher())
    with pytest.raises(ConfigError, match=r"tokenizer stage .* other settings .*vocab_size: 300 there, 400 now"):
        changed.run_shared()
    assert json.loads((tokenizer / "xpert_tokenizer.json").read_text()) == meta


def test_a_cell_trained_with_another_configuration_is_refused(runner, monkeypatch):
    monkeypatch.setattr(MatrixRunner, "run_shared", lambda self: {})
    cells = runner.matrix.cells()
    assert runner.run() == {"done": len(cells)}
    assert runner.run() == {"skipped": len(cells)}
    runner.matrix.scales["2l"].overrides["model.learning_rate"] = 0.5  # e.g. an edited method or scale YAML
    calls = len(runner.launch.calls)
    with pytest.raises(ConfigError, match=r"cell .* another configuration \(model.learning_rate: 0.001 there, 0.5 now"):
        runner.run()
    assert len(runner.launch.calls) == calls


def test_a_cell_that_failed_before_training_starts_anew_after_an_edit(runner, monkeypatch):
    monkeypatch.setattr(MatrixRunner, "run_shared", lambda self: {})
    runner.launch.status = 1  # failed before its first checkpoint: nothing trained
    cells = runner.matrix.cells()
    assert runner.run() == {"failed": len(cells)}
    runner.matrix.scales["2l"].overrides["model.weight_decay"] = 0.01  # the fix
    runner.launch.status = 0
    assert runner.run() == {"done": len(cells)}


def test_a_stage_added_to_the_matrix_runs_on_done_cells(runner, monkeypatch):
    monkeypatch.setattr(MatrixRunner, "run_shared", lambda self: {})
    cells = runner.matrix.cells()
    runner.run()
    monkeypatch.setattr(type(runner.matrix), "wants_sft", lambda self, cell: True)
    monkeypatch.setattr(MatrixRunner, "config_problems", lambda self: [])
    monkeypatch.setattr(
        MatrixRunner,
        "sft_call",
        lambda self, cell: FitCall({}, self.layout.cell(cell.scale, cell.budget, cell.method, cell.seed) / "sft"),
    )
    calls = len(runner.launch.calls)
    assert runner.run() == {"done": len(cells)}  # was "skipped": the sft stage never ran
    assert [c.run_dir.name for c in runner.launch.calls[calls:]] == ["sft"] * len(cells)


def test_a_killed_source_stage_resumes_from_its_last_checkpoint(
    tmp_path, tiny_data_root, tiny_tokenizer_dir, monkeypatch
):
    spec = yaml.safe_load(write_matrix(tmp_path, tiny_data_root, tiny_tokenizer_dir, tmp_path, ["scratch"]).read_text())
    spec["source"] = {"config": "configs/source/tiny.yaml", "steps": 4}
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(spec))
    runner = MatrixRunner(load_matrix(tmp_path / "matrix.yaml", root=REPO), launch=FakeLauncher())
    calls = []
    monkeypatch.setattr("xpert_pl.pipeline.training.fit", lambda config, run_dir, **kw: calls.append((run_dir, kw)))
    runner._train_source()
    last = runner.layout.source_run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    runner._train_source()
    assert calls == [
        (runner.layout.source_run, {"resume": False, "overwrite": True}),
        (runner.layout.source_run, {"resume": True, "overwrite": False}),
    ]
