"""Nothing is lost: outputs replace only the kit's own artifacts of the same kind, once complete; a run folder holds
one run; Ctrl-C / SIGTERM keep a checkpoint and say how to resume; a full disk leaves no partial checkpoint; files
get the umask's permissions."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safety_checks import refused, tiny_fit_args, tree_digest

import xpert_pl.training.lightning_cli  # noqa: F401  (Lightning imported at collection: its log handler binds to pytest's capture)
from xpert_pl.artifacts import ARTIFACT_FILE, atomic_directory, write_json
from xpert_pl.cli import main
from xpert_pl.errors import ConfigError
from xpert_pl.report import build

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, steps: int = 4, every: int = 100, extra_callback: dict | None = None) -> Path:
    """The tiny pre-training config, checkpointing every `every` steps, optionally with one more callback."""
    config = yaml.safe_load((REPO / "configs" / "pretrain" / "tiny.yaml").read_text())
    config["trainer"].update(max_steps=steps, val_check_interval=steps, enable_progress_bar=False)
    (checkpoint,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    checkpoint["init_args"]["every_n_train_steps"] = every
    if extra_callback is not None:
        config["trainer"]["callbacks"].append(extra_callback)
    path = tmp_path / f"config-{steps}-{every}-{len(config['trainer']['callbacks'])}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---- run folders -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_data_root, tiny_tokenizer_dir, tmp_path_factory):
    """A completed 4-step run: (its argv, its folder)."""
    root = tmp_path_factory.mktemp("finished")
    argv = tiny_fit_args(_config(root), root / "run", tiny_data_root, tiny_tokenizer_dir)
    main(argv)
    return argv, root / "run"


def test_a_second_fit_into_a_finished_run_is_refused(finished_run, capsys):
    argv, run = finished_run
    before = tree_digest(run.parent)
    refused(capsys, argv, str(run), "already holds a run", "--ckpt_path last", "--overwrite true")
    assert tree_digest(run.parent) == before


def test_resuming_a_run_at_its_last_step_keeps_its_metrics(tiny_data_root, tiny_tokenizer_dir, tmp_path):
    # A run killed after its last checkpoint (e.g. during the final export) is resumed at max_steps: Lightning then
    # skips the train loop and its hooks, and metrics.csv (deleted by the CSVLogger on start) was not restored.
    from xpert_pl.report.runs import read_metrics_csv

    argv = tiny_fit_args(_config(tmp_path, every=4), tmp_path / "run", tiny_data_root, tiny_tokenizer_dir)
    main(argv)
    run = tmp_path / "run"
    rows = read_metrics_csv(run / "metrics.csv")
    shutil.rmtree(run / "hf")  # as a kill during the export leaves it
    main([*argv, "--ckpt_path", "last"])
    assert read_metrics_csv(run / "metrics.csv") == rows and any("val/loss" in row for row in rows)
    assert "| 5." in (run / "hf" / "README.md").read_text().split("final validation loss")[1][:40]


def test_a_run_resumed_at_its_last_step_runs_its_fit_end_evaluation(tiny_data_root, tiny_tokenizer_dir, tmp_path):
    # Its checkpoint was saved before the fit-end evaluation (e.g. lm-eval), which a kill may have cut short; Lightning
    # skips on_train_end when a run resumes at max_steps, so the evaluation never ran.
    from xpert_pl.report.runs import read_metrics_csv

    record = tmp_path / "evaluated.txt"
    end_eval = {"class_path": "kill_switch.CountedEndEvaluation", "init_args": {"record": str(record)}}
    config = _config(tmp_path, every=4, extra_callback=end_eval)
    argv = tiny_fit_args(config, tmp_path / "run", tiny_data_root, tiny_tokenizer_dir)
    sys.path.insert(0, str(REPO / "tests" / "training"))
    try:
        main(argv)
        shutil.rmtree(tmp_path / "run" / "hf")
        main([*argv, "--ckpt_path", "last"])
    finally:
        sys.path.remove(str(REPO / "tests" / "training"))
    assert record.read_text().split() == ["4", "4"]
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert [row["step"] for row in rows if "eval/end" in row] == [4]


def test_validating_a_last_checkpoint_older_than_the_run(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    # Checkpoints every 2 steps, 5 steps: last.ckpt holds step 4, the export step 5; `last` scored the older model.
    argv = tiny_fit_args(_config(tmp_path, steps=5, every=2), tmp_path / "run", tiny_data_root, tiny_tokenizer_dir)
    main(argv)
    before = tree_digest(tmp_path)
    err = refused(capsys, ["validate", *argv[1:], "--ckpt_path=last"], "is at step 4, but the run ended at step 5")
    assert f"--model.init_checkpoint={tmp_path / 'run' / 'hf'}" in err and tree_digest(tmp_path) == before


def test_a_folder_locked_by_another_fit_is_refused(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    from filelock import FileLock

    run = tmp_path / "run"
    run.mkdir()
    argv = tiny_fit_args(_config(tmp_path), run, tiny_data_root, tiny_tokenizer_dir)
    with FileLock(str(run / ".xpert-fit.lock")):
        before = tree_digest(tmp_path)
        refused(capsys, argv, "another xpert fit is writing", str(run))
        assert tree_digest(tmp_path) == before


def test_overwrite_keeps_the_old_run_until_the_new_one_completes(finished_run, tmp_path):
    argv, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    old_metrics = (copy / "metrics.csv").read_text()
    argv = [a.replace(str(run), str(copy)) for a in argv]
    failing = {"class_path": "kill_switch.FailAtStep", "init_args": {"step": 1}}
    failing_argv = [a if a.endswith(".yaml") is False else str(_config(tmp_path, extra_callback=failing)) for a in argv]
    sys.path.insert(0, str(REPO / "tests" / "training"))
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            main([*failing_argv, "--overwrite=true"])
    finally:
        sys.path.remove(str(REPO / "tests" / "training"))
    (kept,) = copy.glob(".replaced-*")
    assert (kept / "metrics.csv").read_text() == old_metrics  # the failed run lost nothing
    main([*argv, "--overwrite=true"])
    assert not list(copy.glob(".replaced-*"))
    assert (copy / "hf" / "config.json").is_file()
    assert not (copy / ".xpert-fit.lock").exists()


# ---- interrupts and a full disk ----------------------------------------------------------------------------------


def _fit_process(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "training"), str(REPO)])}
    command = [sys.executable, "-m", "xpert_pl.cli", *argv]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("how", "status"), [("keyboard", 1), ("sigterm", 143)])
def test_interrupt_saves_a_checkpoint_and_prints_the_resume_command(
    how, status, tiny_data_root, tiny_tokenizer_dir, tmp_path
):
    switch = {"class_path": "kill_switch.InterruptAtStep", "init_args": {"step": 3, "how": how}}
    config = _config(tmp_path, steps=8, every=4, extra_callback=switch)
    argv = tiny_fit_args(config, tmp_path / "run", tiny_data_root, tiny_tokenizer_dir)
    interrupted = _fit_process(argv)
    assert interrupted.returncode == status, interrupted.stderr[-3000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert "interrupted at step" in interrupted.stderr and f"saved {last}" in interrupted.stderr
    assert "Resume with: xpert fit" in interrupted.stderr and "--ckpt_path last" in interrupted.stderr
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] >= 3
    if how == "keyboard":  # resuming works the same after either signal; once is enough here
        # Interrupted before its first periodic save (step 4): the resumed run's saves must go to last.ckpt itself,
        # not to a last-v1.ckpt beside it.
        plain = tiny_fit_args(_config(tmp_path, steps=8, every=4), tmp_path / "run", tiny_data_root, tiny_tokenizer_dir)
        resumed = _fit_process([*plain, "--ckpt_path", "last"])
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert (tmp_path / "run" / "hf" / "config.json").is_file()
        assert sorted(p.name for p in last.parent.glob("last*.ckpt")) == ["last.ckpt"]
        assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 8


def test_full_disk_leaves_no_partial_checkpoint(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys, monkeypatch):
    import xpert_pl.training.checkpointing as checkpointing

    real_save, saves = torch.save, []

    def save_until_the_disk_fills(obj, fh):
        saves.append(1)
        if len(saves) < 3:
            return real_save(obj, fh)
        fh.write(b"half a checkpoint")  # some bytes reach the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", save_until_the_disk_fills)
    argv = tiny_fit_args(_config(tmp_path, steps=4, every=1), tmp_path / "run", tiny_data_root, tiny_tokenizer_dir)
    refused(capsys, argv, "disk is full", "last.ckpt", "--ckpt_path last")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
    # What resume would pick up is the last complete checkpoint, and it loads.
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] >= 1


def test_ctrl_c_in_analyze_says_a_rerun_resumes(
    tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, tmp_path, capsys, monkeypatch
):
    import xpert_pl.analysis.counter as counter

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(counter, "count_activations", interrupted)
    argv = ["analyze", f"--model={tiny_source_dir}", f"--data.tokenizer={tiny_tokenizer_dir}"]
    argv += [f"--data.data_root={tiny_data_root}", f"--data.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, f"--out_dir={tmp_path / 'analysis'}"])
    assert exc.value.code == 130
    assert "re-running the same command resumes" in capsys.readouterr().out
    assert not (tmp_path / "analysis").exists()


def test_ctrl_c_in_extract_says_a_rerun_resumes(tiny_source_dir, tiny_analysis_dir, tmp_path, capsys, monkeypatch):
    from xpert_pl.bank.tucker import TuckerConsolidator

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TuckerConsolidator, "decompose", interrupted)
    argv = ["extract", f"--model={tiny_source_dir}", f"--selection={tiny_analysis_dir / 'selection.json'}"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, f"--out_dir={tmp_path / 'bank'}"])
    assert exc.value.code == 130
    assert "re-running the same command resumes" in capsys.readouterr().out
    assert not (tmp_path / "bank").exists()


# ---- artifacts ---------------------------------------------------------------------------------------------------


def test_an_artifact_replaces_only_its_own_kind(tmp_path):
    target = tmp_path / "bank"
    with atomic_directory(target, "bank") as tmp:
        (tmp / "a.txt").write_text("first")
    with atomic_directory(target, "bank") as tmp:
        (tmp / "a.txt").write_text("second")
    assert (target / "a.txt").read_text() == "second"
    with pytest.raises(ConfigError, match="is a bank the kit wrote"), atomic_directory(target, "analysis"):
        pass
    assert (target / "a.txt").read_text() == "second"


def test_a_failed_write_leaves_the_old_artifact(tmp_path):
    target = tmp_path / "bank"
    with atomic_directory(target, "bank") as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target, "bank") as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["bank"]  # no temporary left


def test_a_users_folder_is_never_replaced(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.md").write_text("keep")
    with pytest.raises(ConfigError, match="not a bank the kit wrote"), atomic_directory(folder, "bank"):
        pass
    (folder / ARTIFACT_FILE).write_text("not json")
    with pytest.raises(ConfigError), atomic_directory(folder, "bank"):
        pass
    assert (folder / "notes.md").read_text() == "keep"


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_artifacts_get_the_umask_permissions(umask, file_mode, dir_mode, tiny_source_dir, tiny_analysis_dir, tmp_path):
    previous = os.umask(umask)
    try:
        main(
            [
                "extract",
                f"--model={tiny_source_dir}",
                f"--selection={tiny_analysis_dir / 'selection.json'}",
                f"--out_dir={tmp_path / 'bank'}",
            ]
        )
        write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(previous)
    bank = tmp_path / "bank"
    assert bank.stat().st_mode & 0o777 == dir_mode
    assert {p.stat().st_mode & 0o777 for p in bank.iterdir()} == {file_mode}
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == file_mode


def test_partial_pieces_beside_user_files_are_not_deleted(tmp_path):
    from xpert_pl.resume import FinishedUnits

    units = FinishedUnits(tmp_path / ".out.partial", {"settings": 1})
    (units.directory / "my-notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match=r"my-notes\.txt"):
        FinishedUnits(tmp_path / ".out.partial", {"settings": 2})  # other settings would discard the pieces
    assert (units.directory / "my-notes.txt").read_text() == "keep"


def test_a_report_never_replaces_a_foreign_folder(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tests" / "report"))
    try:
        from report_fixture import build_runs_dir
    finally:
        sys.path.remove(str(REPO / "tests" / "report"))
    runs = build_runs_dir(tmp_path / "runs")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.md").write_text("my own draft")
    before = tree_digest(tmp_path)
    refused(capsys, ["report", str(runs), f"--out_dir={tmp_path / 'out'}"], "not a report the kit wrote")
    assert tree_digest(tmp_path) == before


def test_a_report_keeps_the_files_it_did_not_write(tmp_path, capsys):
    # A committed results folder holds the report and the matrix as run, copied beside it.
    sys.path.insert(0, str(REPO / "tests" / "report"))
    try:
        from report_fixture import build_runs_dir
    finally:
        sys.path.remove(str(REPO / "tests" / "report"))
    runs = build_runs_dir(tmp_path / "runs")
    argv = ["report", str(runs), f"--out_dir={tmp_path / 'out'}"]
    main(argv)
    (tmp_path / "out" / "matrix.yaml").write_text("seeds: [0]\n")
    before = tree_digest(tmp_path)
    refused(capsys, argv, "holds files a report does not write (matrix.yaml)", "Move them out")
    assert tree_digest(tmp_path) == before
    (tmp_path / "out" / "matrix.yaml").unlink()
    main(argv)  # an earlier report alone is replaced
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(build.REPORT_ENTRIES)
