"""Cell processes forked from the kit's server: output, exit status, and the refusal once the kit's sources change."""

from __future__ import annotations

import pytest

from xpert_pl.errors import ConfigError
from xpert_pl.experiments import fork_server
from xpert_pl.experiments.fork_server import check_kit_unchanged, kit_sources, run_forked
from xpert_pl.experiments.runner import FitCall


def test_a_forked_call_logs_its_output_and_returns_the_exit_status(tmp_path):
    log_file = tmp_path / "cell" / "run.log"
    bad = FitCall({"trainer": {"max_steps": 0}}, tmp_path / "run")
    assert run_forked(bad, log_file) == 2
    assert "xpert fit: error:" in log_file.read_text()  # the child's stderr, one paragraph, appended to the log
    assert not (tmp_path / "run").exists()


def test_kit_sources_hash_every_python_file_by_content(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not code")
    before = kit_sources([tmp_path])
    assert sorted(before) == [str(tmp_path / "a.py"), str(tmp_path / "sub" / "b.py")]
    (tmp_path / "a.py").write_text("x = 1\n")  # rewritten, same content: not a change
    assert kit_sources([tmp_path]) == before
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    assert kit_sources([tmp_path])[str(tmp_path / "sub" / "b.py")] != before[str(tmp_path / "sub" / "b.py")]


def test_the_installed_kit_is_fingerprinted_with_its_callbacks():
    files = kit_sources()
    assert any(f.endswith("experiments/fork_server.py") for f in files)
    assert any(f.endswith("callbacks/__init__.py") for f in files)


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
    assert "(kit/a.py, kit/b.py, kit/new.py)" in message and "run `xpert bench run` again" in message


def test_run_forked_refuses_before_forking_when_the_kit_changed(tmp_path, monkeypatch):
    recorded = kit_sources()
    recorded[next(iter(recorded))] = "an older version"
    monkeypatch.setattr(fork_server, "_server_sources", recorded)
    log_file = tmp_path / "cell" / "run.log"
    with pytest.raises(ConfigError, match="changed while this bench ran"):
        run_forked(FitCall({"trainer": {"max_steps": 0}}, tmp_path / "run"), log_file)
    assert not log_file.parent.exists()
