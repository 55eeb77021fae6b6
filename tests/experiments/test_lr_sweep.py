"""The learning-rate sweep: every (method, rate) run once, scratch's best rate becomes every cell's."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import yaml

import xpert_pl.experiments.runner as runner_module
from xpert_pl.errors import ConfigError
from xpert_pl.experiments.lr_sweep import SweepRunFailed
from xpert_pl.experiments.matrix import load_matrix
from xpert_pl.experiments.runner import FitCall, MatrixRunner
from xpert_pl.layout import RunLayout

REPO = Path(__file__).resolve().parents[2]
BEST = {"scratch": 1e-3, "xpert": 3e-3}


def matrix_file(tmp_path: Path, tiny_source_dir: Path, sweep: dict) -> Path:
    spec = {
        "out_dir": str(tmp_path / "bench"),
        "data": {"tokenizer": str(tmp_path / "tok")},
        "source": {"hf": str(tiny_source_dir)},
        "analyze": "configs/analyze/tiny.yaml",
        "extract": "configs/extract/tiny.yaml",
        "scales": {"2l": {"config": "configs/pretrain/tiny.yaml"}},
        "budgets": {"long": 4},
        "seeds": [0, 1],
        "methods": {"scratch": "configs/methods/scratch.yaml", "xpert": "configs/methods/xpert.yaml"},
        "lr_sweep": sweep,
    }
    (tmp_path / "tok").mkdir(exist_ok=True)  # the given tokenizer: a local directory (the runner checks it)
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class SweepLauncher:
    """Writes the run a fit would leave, its final loss lowest at the method's `BEST` rate."""

    def __init__(self):
        self.calls: list[FitCall] = []

    def __call__(self, call: FitCall, log_file: Path) -> int:
        self.calls.append(call)
        rate = call.config["model"]["learning_rate"]
        method = "xpert" if "Xpert" in call.config["model"]["initializer"]["class_path"] else "scratch"
        (call.run_dir / "hf").mkdir(parents=True, exist_ok=True)
        (call.run_dir / "hf" / "config.json").write_text("{}")
        loss = 3.0 + abs(math.log10(rate / BEST[method]))
        (call.run_dir / "metrics.csv").write_text(f"step,val/loss\n3,{loss}\n")
        return 0


def test_the_sweep_chooses_scratchs_best_rate_for_every_cell(tmp_path, tiny_source_dir, monkeypatch):
    sweep = {"rates": [3e-4, 1e-3, 3e-3, 1e-2], "methods": ["scratch", "xpert"]}
    runner = MatrixRunner(load_matrix(matrix_file(tmp_path, tiny_source_dir, sweep), root=REPO), launch=SweepLauncher())
    monkeypatch.setattr(MatrixRunner, "run_shared", lambda self: {})
    monkeypatch.setattr(MatrixRunner, "config_problems", lambda self: [])
    assert runner.run() == {"done": 4}
    record = json.loads(runner.layout.lr_sweep.read_text())
    assert record["chosen"] == 1e-3 and record["best"] == {"scratch": 1e-3, "xpert": 3e-3}
    assert record["loss"]["scratch"]["0.01"] == pytest.approx(4.0)
    sweep_calls, cell_calls = runner.launch.calls[:8], runner.launch.calls[8:]
    assert {(c.run_dir.parent.name, c.run_dir.name) for c in sweep_calls} == {
        (m, f"lr{r:g}") for m in ("scratch", "xpert") for r in sweep["rates"]
    }
    # Seed 0 at the chosen rate is the sweep's own run of each method: copied, not trained again.
    assert [(c.run_dir.parent.name, c.run_dir.name) for c in cell_calls] == [("scratch", "seed1"), ("xpert", "seed1")]
    assert [c.config["model"]["learning_rate"] for c in cell_calls] == [1e-3] * 2
    cell = json.loads((runner.layout.cell("2l", "long", "xpert", 1) / "cell.json").read_text())
    assert cell["learning_rate"] == 1e-3 and "reused_from" not in cell
    for method in ("scratch", "xpert"):
        reused = runner.layout.cell("2l", "long", method, 0)
        twin = runner.layout.lr_sweep_run(method, 1e-3)
        cell = json.loads((reused / "cell.json").read_text())
        assert cell["status"] == "done" and cell["reused_from"] == str(twin) and cell["stage_wall_s"]["pretrain"] == 0
        assert (reused / "metrics.csv").read_text() == (twin / "metrics.csv").read_text()
        assert (reused / "hf" / "config.json").is_file() and not (reused / "hf.partial").exists()
    wall = json.loads(runner.layout.wall_times.read_text())
    assert sorted(wall) == sorted(f"lr sweep: {m} at {r:g}" for m in ("scratch", "xpert") for r in sweep["rates"])
    assert all(seconds >= 0 for seconds in wall.values())
    before = len(runner.launch.calls)
    runner.run()  # a rerun reuses every sweep run and every cell
    assert len(runner.launch.calls) == before
    assert json.loads(runner.layout.wall_times.read_text()) == wall  # nothing ran: nothing added


def test_a_failed_sweep_run_stops_the_bench_before_any_cell(tmp_path, tiny_source_dir, monkeypatch):
    # Its partial metrics.csv (an early, high-rate loss) must not compete: no rate is chosen from part of the sweep.
    launcher = SweepLauncher()

    def launch(call: FitCall, log_file: Path) -> int:
        if call.config["model"]["learning_rate"] == 1e-2:
            call.run_dir.mkdir(parents=True, exist_ok=True)
            (call.run_dir / "metrics.csv").write_text("step,val/loss\n1,0.5\n")  # crashed at step 2, no export
            return 1
        return launcher(call, log_file)

    sweep = {"rates": [1e-3, 1e-2], "methods": ["scratch"]}
    runner = MatrixRunner(load_matrix(matrix_file(tmp_path, tiny_source_dir, sweep), root=REPO), launch=launch)
    monkeypatch.setattr(MatrixRunner, "run_shared", lambda self: {})
    monkeypatch.setattr(MatrixRunner, "config_problems", lambda self: [])
    with pytest.raises(SweepRunFailed, match=r"1 run\(s\) of the learning-rate sweep did not finish .*lr0.01"):
        runner.run()
    assert not runner.layout.lr_sweep.exists() and len(launcher.calls) == 1  # no record, no cell
    monkeypatch.setattr(runner_module, "MatrixRunner", lambda *args, **kwargs: runner)
    with pytest.raises(SystemExit, match="xpert bench run: 1 run"):  # a message and exit 1, not a traceback
        runner_module.bench_run(str(matrix_file(tmp_path, tiny_source_dir, sweep)))


def test_a_diverged_rate_is_never_the_best():
    from xpert_pl.experiments.lr_sweep import best_rate

    assert best_rate({"0.01": float("nan"), "0.003": 4.9, "0.001": 5.1}) == 0.003
    assert best_rate({"0.01": float("nan"), "0.003": None}) is None


def test_parallel_jobs_train_the_sweep_runs_at_the_same_time(tmp_path, tiny_source_dir, monkeypatch):
    import itertools
    import threading

    sweep = {"rates": [3e-4, 1e-3, 3e-3, 1e-2], "methods": ["scratch", "xpert"]}
    launcher, both_running, started = SweepLauncher(), threading.Barrier(2, timeout=60), itertools.count()

    def launch(call: FitCall, log_file: Path) -> int:
        if next(started) < 2:  # the first two runs wait for each other: they run side by side, or the barrier breaks
            both_running.wait()
        return launcher(call, log_file)

    matrix = load_matrix(matrix_file(tmp_path, tiny_source_dir, sweep), root=REPO)
    runner = MatrixRunner(matrix, jobs=2, launch=launch)
    monkeypatch.setattr(MatrixRunner, "run_shared", lambda self: {})
    monkeypatch.setattr(MatrixRunner, "config_problems", lambda self: [])
    assert runner.run() == {"done": 4}
    assert len(launcher.calls) == 10  # 8 sweep runs, then the 2 cells of seed 1
    record = json.loads(runner.layout.lr_sweep.read_text())
    assert record["chosen"] == 1e-3 and record["best"] == {"scratch": 1e-3, "xpert": 3e-3}
    assert len(json.loads(runner.layout.wall_times.read_text())) == 8  # every run's seconds, none lost to a race


def test_only_limits_the_cells_not_the_sweep(tmp_path, tiny_source_dir, monkeypatch, capsys):
    # `xpert bench run --only '[xpert]'` on a matrix with a sweep: the sweep still trains scratch (its best rate
    # is every cell's); it used to fail with KeyError 'scratch'.
    from xpert_pl.experiments import runner as runner_module

    sweep = {"rates": [1e-3, 3e-3], "methods": ["scratch", "xpert"]}
    path = matrix_file(tmp_path, tiny_source_dir, sweep)
    launcher = SweepLauncher()
    monkeypatch.setattr(runner_module, "MatrixRunner", functools.partial(MatrixRunner, launch=launcher))
    monkeypatch.setattr(MatrixRunner, "run_shared", lambda self: {})
    monkeypatch.setattr(MatrixRunner, "config_problems", lambda self: [])
    monkeypatch.chdir(REPO)
    runner_module.bench_run(str(path), only=["xpert"])
    assert json.loads(capsys.readouterr().out)["done"] == 2  # xpert seed 0 (copied from the sweep) and seed 1
    layout = RunLayout(tmp_path / "bench", tiny_source_dir)
    assert json.loads(layout.lr_sweep.read_text())["chosen"] == 1e-3
    trained = [(c.run_dir.parent.name, c.run_dir.name) for c in launcher.calls]
    assert sorted(trained[:4]) == sorted((m, f"lr{r:g}") for m in ("scratch", "xpert") for r in sweep["rates"])
    assert trained[4:] == [("xpert", "seed1")] and not layout.cell("2l", "long", "scratch", 1).exists()


def test_only_refuses_a_method_the_matrix_lacks(tmp_path, tiny_source_dir):
    from xpert_pl.experiments.runner import bench_run

    path = matrix_file(tmp_path, tiny_source_dir, {"rates": [1e-3, 3e-3]})
    with pytest.raises(ConfigError, match=r"--only names \['nope'\], not methods of .*choose from scratch, xpert"):
        bench_run(str(path), only=["xpert", "nope"])
    assert not (tmp_path / "bench").exists()


@pytest.mark.parametrize(
    ("sweep", "fragment"),
    [
        ({"rates": [1e-3]}, "at least two positive learning rates"),
        ({"rates": [1e-3, -1.0]}, "at least two positive learning rates"),
        ({"rates": [1e-3, 3e-3], "methods": ["xpert"]}, "the first must be 'scratch'"),
        ({"rates": [1e-3, 3e-3], "methods": ["scratch", "nope"]}, "'nope' is not one of the methods"),
        ({"rates": [1e-3, 3e-3], "scale": "9l"}, "'9l' is not one of the scales"),
    ],
)
def test_bad_sweeps_are_refused(tmp_path, tiny_source_dir, sweep, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_matrix(matrix_file(tmp_path, tiny_source_dir, sweep), root=REPO)


def test_only_a_sweep_run_recorded_with_the_cells_own_config_is_copied(tmp_path, tiny_source_dir, monkeypatch):
    from xpert_pl.experiments.lr_sweep import FIT_CALL_FILE

    sweep = {"rates": [1e-3, 3e-3], "methods": ["scratch", "xpert"]}
    runner = MatrixRunner(load_matrix(matrix_file(tmp_path, tiny_source_dir, sweep), root=REPO), launch=SweepLauncher())
    monkeypatch.setattr(MatrixRunner, "run_shared", lambda self: {})
    monkeypatch.setattr(MatrixRunner, "config_problems", lambda self: [])
    real_cells = MatrixRunner.run_cell
    monkeypatch.setattr(MatrixRunner, "run_cell", lambda self, cell: "held")  # the sweep alone, first
    runner.run()
    # Scratch's run at the chosen rate was trained with another configuration (an edit since): it must not be
    # taken for the cell, although today's YAMLs rebuild the same configuration for both.
    recorded = runner.layout.lr_sweep_run("scratch", 1e-3) / FIT_CALL_FILE
    config = json.loads(recorded.read_text())
    recorded.write_text(json.dumps({**config, "model": {**config["model"], "weight_decay": 0.0}}))
    monkeypatch.setattr(MatrixRunner, "run_cell", real_cells)
    runner.launch.calls.clear()
    assert runner.run() == {"done": 4}
    trained = [(c.run_dir.parent.name, c.run_dir.name) for c in runner.launch.calls]
    assert trained == [("scratch", "seed0"), ("scratch", "seed1"), ("xpert", "seed1")]
    xpert = runner.layout.cell("2l", "long", "xpert", 0) / "cell.json"
    assert json.loads(xpert.read_text())["reused_from"] == str(runner.layout.lr_sweep_run("xpert", 1e-3))
    # A later attempt at the copied cell (e.g. its SFT failed) keeps the record of where its run came from.
    xpert.write_text(json.dumps({**json.loads(xpert.read_text()), "status": "failed"}))
    assert runner.run() == {"done": 1, "skipped": 3}
    record = json.loads(xpert.read_text())
    assert record["reused_from"] == str(runner.layout.lr_sweep_run("xpert", 1e-3))
    assert record["stage_wall_s"] == {"pretrain": 0.0}
