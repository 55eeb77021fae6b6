"""Cell processes forked from the kit's server: output, exit status, and the refusal once the kit's sources change."""

from __future__ import annotations

import pytest

from xpert_pl.errors import ConfigError
from xpert_pl.experiments import fork_server
from xpert_pl.experiments.fork_server import cell_threads, check_kit_unchanged, kit_sources, run_forked
from xpert_pl.experiments.runner import FitCall


def test_a_forked_call_logs_its_output_and_returns_the_exit_status(tmp_path):
    log_file = tmp_path / "cell" / "run.log"
    bad = FitCall({"trainer": {"max_steps": 0}}, tmp_path / "run")
    assert run_forked(bad, log_file) == 2
    assert "xpert fit: error:" in log_file.read_text()  # the child's stderr, one paragraph, appended to the log
    assert not (tmp_path / "run").exists()


def test_kit_sources_hash_the_python_files_cells_may_import_by_content(tmp_path):
    kit = tmp_path / "kit"
    for folder in ("sub", "report"):
        (kit / folder).mkdir(parents=True)
    (kit / "a.py").write_text("x = 1\n")
    (kit / "sub" / "b.py").write_text("y = 2\n")
    (kit / "notes.txt").write_text("not code")
    (kit / "report" / "tables.py").write_text("no cell imports the report")
    (kit / ".#a.py").symlink_to(kit / "missing")  # an editor's lock file: hidden, and dangling
    before = kit_sources([kit])
    assert sorted(before) == ["kit/a.py", "kit/sub/b.py"]
    (kit / "a.py").write_text("x = 1\n")  # rewritten, same content: not a change
    (kit / "report" / "tables.py").write_text("edited while a bench runs")
    assert kit_sources([kit]) == before
    (kit / "sub" / "b.py").write_text("y = 3\n")
    assert kit_sources([kit])["kit/sub/b.py"] != before["kit/sub/b.py"]


def test_the_installed_kit_is_fingerprinted_with_its_callbacks():
    files = kit_sources()
    assert "xpert_pl/experiments/fork_server.py" in files and "xpert_pl/training/module.py" in files
    assert any(f.endswith("/__init__.py") and "callbacks" in f for f in files)
    assert not any(f.startswith("xpert_pl/report/") for f in files)


def test_a_changed_added_or_removed_source_file_stops_further_cells(monkeypatch):
    monkeypatch.setattr(fork_server, "_server_sources", None)
    sources = {"kit/a.py": "1", "kit/b.py": "2"}
    monkeypatch.setattr(fork_server, "kit_sources", lambda: dict(sources))
    check_kit_unchanged()  # the first cell records the kit
    check_kit_unchanged()
    sources["kit/b.py"] = "changed"
    sources["kit/new.py"] = "3"
    del sources["kit/a.py"]
    with pytest.raises(ConfigError) as error:
        check_kit_unchanged()
    message = str(error.value)
    assert "(kit/a.py, kit/b.py, kit/new.py)" in message and "no further cell was started" in message


def test_run_forked_refuses_before_forking_when_the_kit_changed(tmp_path, monkeypatch):
    recorded = kit_sources()
    recorded[next(iter(recorded))] = "an older version"
    monkeypatch.setattr(fork_server, "_server_sources", recorded)
    log_file = tmp_path / "cell" / "run.log"
    with pytest.raises(ConfigError, match="changed while this bench ran"):
        run_forked(FitCall({"trainer": {"max_steps": 0}}, tmp_path / "run"), log_file)
    assert not log_file.parent.exists()


def test_a_bench_records_its_kit_before_the_shared_stages_and_refuses_cells_after_a_change(
    tmp_path, tiny_data_root, tiny_tokenizer_dir, tiny_source_dir, monkeypatch
):
    from test_runner import REPO, FakeLauncher, write_matrix

    from xpert_pl.experiments.matrix import load_matrix
    from xpert_pl.experiments.runner import MatrixRunner

    sources = {"xpert_pl/a.py": "1"}
    monkeypatch.setattr(fork_server, "_server_sources", None)
    monkeypatch.setattr(fork_server, "kit_sources", lambda: dict(sources))
    path = write_matrix(tmp_path, tiny_data_root, tiny_tokenizer_dir, tiny_source_dir, ["scratch"])
    fake = FakeLauncher()

    def launch(call, log_file):  # run_forked's check, then a fake fork
        check_kit_unchanged()
        return fake(call, log_file)

    runner = MatrixRunner(load_matrix(path, root=REPO), launch=launch)
    shared = runner.run_shared
    monkeypatch.setattr(runner, "run_shared", lambda: (sources.update({"xpert_pl/a.py": "2"}), shared())[1])
    with pytest.raises(ConfigError, match=r"changed while this bench ran \(xpert_pl/a.py\)"):
        runner.run()  # edited during the shared stages, before any cell: recorded at the bench's start
    assert fake.calls == []


def test_parallel_cells_share_out_torchs_threads(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # torch's default here, or OMP_NUM_THREADS
    assert [cell_threads(jobs) for jobs in (0, 1, 2, 3, 4, 8)] == [None, None, 2, 1, 1, 1]


def test_a_forked_cell_runs_with_the_threads_it_was_given(tmp_path):
    import functools

    import torch

    report = "import torch; print('threads in the call:', torch.get_num_threads())"
    call = functools.partial(exec, report, {})  # picklable by reference, as a cell's FitCall is
    log_file = tmp_path / "run.log"
    default = torch.get_num_threads()
    assert run_forked(call, log_file, threads=default + 1) == 0
    assert run_forked(call, log_file) == 0
    lines = log_file.read_text().splitlines()
    given = default + 1
    assert lines[:2] == [f"[bench] torch threads in this cell: {given}", f"threads in the call: {given}"]
    assert lines[2:] == [f"threads in the call: {default}"]  # None: the server's default, not the last cell's


def test_a_runner_of_parallel_cells_forks_them_with_a_share_of_the_cores(
    tmp_path, tiny_data_root, tiny_tokenizer_dir, tiny_source_dir, monkeypatch
):
    import torch
    from test_runner import REPO, write_matrix

    from xpert_pl.experiments.matrix import load_matrix
    from xpert_pl.experiments.runner import MatrixRunner

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    matrix = load_matrix(write_matrix(tmp_path, tiny_data_root, tiny_tokenizer_dir, tiny_source_dir, ["scratch"]), REPO)
    one, two = MatrixRunner(matrix), MatrixRunner(matrix, jobs=2)
    assert one.launch.func is run_forked and one.launch.keywords == {"threads": None}
    assert two.launch.func is run_forked and two.launch.keywords == {"threads": 1}
