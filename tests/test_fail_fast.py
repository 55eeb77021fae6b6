"""Bad input is refused before any tokenising, model loading, counting, decomposing or training: exit status 2, one
paragraph naming the file/option and the fix, and the file tree exactly as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safety_checks import CONFIGS, PRETRAIN, refused, tiny_fit_args, tree_digest

# Imported at collection (as Lightning then is): its log handler binds to pytest's capture, not to one test's capsys
# stream, which is closed by the time a later test logs.
import xpert_pl.training.lightning_cli  # noqa: F401


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory: relative paths a command might write land here and show in the digest."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _fit(data_root: Path, tokenizer: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_fit_args(PRETRAIN, run_dir, data_root, tokenizer, "--trainer.max_steps=2", *extra)


def _refused_unchanged(capsys, root: Path, argv: list[str], *fragments: str) -> str:
    before = tree_digest(root)
    err = refused(capsys, argv, *fragments)
    assert tree_digest(root) == before, "the command changed files although it refused to run"
    return err


# ---- xpert fit: options -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "fragments"),
    [
        ("--trainer.max_steps=0", ("--trainer.max_steps", ">= 1")),
        ("--model.learning_rate=0", ("--model.learning_rate", "> 0")),
        ("--model.learning_rate=-0.001", ("--model.learning_rate", "> 0")),
        ("--data.init_args.batch_size=0", ("--data.init_args.batch_size", ">= 1")),
        ("--data.init_args.block_size=1024", ("block size 1024", "max_position_embeddings 512")),
        ('--model.model.init_args.overrides={"num_attention_heads": 3}', ("num_attention_heads 3", "divisible")),
        ("--data.init_args.batch_size=many", ("--data.init_args.batch_size", "expected an int", "'many'")),
    ],
    ids=["max_steps_0", "lr_0", "lr_negative", "batch_0", "block_over_positions", "heads", "type_error"],
)
def test_fit_option_refused(option, fragments, tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work):
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run", option)
    _refused_unchanged(capsys, workdir, argv, *fragments)


def test_duplicate_yaml_key(tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work):
    (workdir / "dup.yaml").write_text("model:\n  learning_rate: 0.1\n  learning_rate: 0.2\n")
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run", "--config", str(workdir / "dup.yaml"))
    _refused_unchanged(capsys, workdir, argv, "dup.yaml", "learning_rate", "appears twice")


# ---- xpert fit: --ckpt_path --------------------------------------------------------------------------------------


def test_ckpt_path_last_without_a_checkpoint(tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work):
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run", "--ckpt_path=last")
    _refused_unchanged(capsys, workdir, argv, "--ckpt_path last", "no checkpoint to resume")


def test_ckpt_path_that_does_not_exist(tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work):
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run", f"--ckpt_path={workdir / 'nope.ckpt'}")
    _refused_unchanged(capsys, workdir, argv, "nope.ckpt", "does not exist")


def test_ckpt_path_of_another_model(tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work):
    state = {"model.model.embed_tokens.weight": torch.zeros(999, 64), "model.lm_head.weight": torch.zeros(999, 64)}
    torch.save({"state_dict": state, "global_step": 5}, workdir / "other.ckpt")
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run", f"--ckpt_path={workdir / 'other.ckpt'}")
    _refused_unchanged(capsys, workdir, argv, "other.ckpt", "another model", "embed_tokens")


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_checkpoint_of_another_model_to_evaluate(subcommand, tiny_data_root, tiny_tokenizer_dir, workdir, capsys):
    state = {"model.model.embed_tokens.weight": torch.zeros(999, 64), "model.lm_head.weight": torch.zeros(999, 64)}
    torch.save({"state_dict": state, "global_step": 5}, workdir / "other.ckpt")
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run", f"--ckpt_path={workdir / 'other.ckpt'}")
    _refused_unchanged(capsys, workdir, [subcommand, *argv[1:]], "other.ckpt", "another model", "embed_tokens")


def test_evaluating_a_run_leaves_it_as_it_was(tiny_data_root, tiny_tokenizer_dir, workdir):
    # Lightning's CSVLogger deletes the metrics.csv of the folder it logs into, and the config would be saved over the
    # run's: validate/test log into <run>/<subcommand>/version_N instead. A training-only option may differ.
    from xpert_pl.cli import main
    from xpert_pl.report.runs import read_metrics_csv

    run = workdir / "run"
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, run, "--trainer.val_check_interval=1")
    main(argv)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    fit_loss = [row["val/loss"] for row in read_metrics_csv(run / "metrics.csv") if "val/loss" in row][-1]
    for ckpt in ("last", run / "checkpoints" / "last.ckpt"):
        main(["validate", *argv[1:], "--model.learning_rate=0.5", f"--ckpt_path={ckpt}"])
    assert {p: p.read_bytes() for p in before} == before, "validate/test changed the run they evaluated"
    for version in ("version_0", "version_1"):
        rows = read_metrics_csv(run / "validate" / version / "metrics.csv")
        assert [row["val/loss"] for row in rows] == [pytest.approx(fit_loss, abs=1e-6)]
        assert "learning_rate: 0.5" in (run / "validate" / version / "config.yaml").read_text()
    main([*argv, "--overwrite=true"])  # the evaluations of the replaced run go with it
    assert not (run / "validate").exists() and not list(run.glob(".replaced-*"))


def test_evaluation_that_would_replace_a_run_or_a_users_file(tiny_data_root, tiny_tokenizer_dir, workdir, capsys):
    from xpert_pl.cli import main

    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run")
    main(argv)
    # Without --ckpt_path, a fresh model would be filed under the run as if it were the run.
    _refused_unchanged(capsys, workdir, ["validate", *argv[1:]], "holds a run, but no --ckpt_path", "--ckpt_path last")
    # Without a logger, Lightning saves the config into the working directory, over the user's file.
    (workdir / "config.yaml").write_text("a user's file\n")
    ckpt = f"--ckpt_path={workdir / 'run' / 'checkpoints' / 'last.ckpt'}"
    no_logger = ["validate", *argv[1:], ckpt, "--trainer.logger=false"]
    _refused_unchanged(capsys, workdir, no_logger, "would log into", "config.yaml", "--trainer.default_root_dir")


def test_evaluating_a_fine_tuned_run_scores_its_checkpoint(tiny_data_root, tiny_tokenizer_dir, workdir, capsys):
    # A warm-started run's config names the model it started from: without --ckpt_path those weights were scored
    # and filed under the run; with it, the "both set" refusal of fit blocked the evaluation.
    from xpert_pl.cli import main
    from xpert_pl.report.runs import read_metrics_csv

    main(_fit(tiny_data_root, tiny_tokenizer_dir, workdir / "base"))
    tuned = workdir / "tuned"
    warm = f"--model.init_checkpoint={workdir / 'base' / 'hf'}"
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, tuned, warm, "--trainer.val_check_interval=1")
    main(argv)
    final = [row["val/loss"] for row in read_metrics_csv(tuned / "metrics.csv") if "val/loss" in row][-1]
    _refused_unchanged(capsys, workdir, ["validate", *argv[1:]], "holds a run, but no --ckpt_path")
    main(["validate", *argv[1:], "--ckpt_path=last"])
    (row,) = read_metrics_csv(tuned / "validate" / "version_0" / "metrics.csv")
    assert row["val/loss"] == pytest.approx(final, abs=1e-6)


def test_test_on_data_without_test_sets(tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work):
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run")
    _refused_unchanged(capsys, workdir, ["test", *argv[1:]], "PretrainDataModule has no test sets", "xpert validate")


def test_ckpt_path_saved_with_other_hyperparameters(tiny_data_root, tiny_tokenizer_dir, workdir, capsys):
    # LightningCLI itself would lay a checkpoint file's hyperparameters over the config and train at the old rate.
    from xpert_pl.cli import main

    main(_fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run"))
    (workdir / "run" / "checkpoints" / "last.ckpt").rename(workdir / "step2.ckpt")
    changed = ["--trainer.max_steps=4", "--model.learning_rate=0.5", "--model.compile=true"]  # compile: free to change
    for ckpt in (workdir / "step2.ckpt", "last"):
        if ckpt == "last":
            (workdir / "step2.ckpt").rename(workdir / "run" / "checkpoints" / "last.ckpt")
        argv = [*_fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run"), *changed, f"--ckpt_path={ckpt}"]
        err = _refused_unchanged(capsys, workdir, argv, "other hyperparameters", "model.learning_rate: 0.001 in the")
        assert "0.5 here" in err and "--model.init_checkpoint" in err and "compile" not in err


def test_truncated_checkpoint(tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work):
    torch.save({"state_dict": {"model.x": torch.zeros(4096)}}, workdir / "cut.ckpt")
    data = (workdir / "cut.ckpt").read_bytes()
    (workdir / "cut.ckpt").write_bytes(data[: len(data) // 2])
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run", f"--ckpt_path={workdir / 'cut.ckpt'}")
    _refused_unchanged(capsys, workdir, argv, "cut.ckpt", "corrupt or truncated")


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_truncated_checkpoint_to_evaluate(subcommand, tiny_data_root, tiny_tokenizer_dir, workdir, capsys):
    torch.save({"state_dict": {"model.x": torch.zeros(4096)}}, workdir / "cut.ckpt")
    data = (workdir / "cut.ckpt").read_bytes()
    (workdir / "cut.ckpt").write_bytes(data[: len(data) // 2])
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run", f"--ckpt_path={workdir / 'cut.ckpt'}")
    _refused_unchanged(capsys, workdir, [subcommand, *argv[1:]], "cut.ckpt", "corrupt or truncated")


def test_unwritable_run_folder(tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work, monkeypatch):
    import xpert_pl.artifacts as artifacts

    # Tests run as root, which writes anywhere: the check itself is what is exercised here.
    monkeypatch.setattr(artifacts, "_can_write", lambda directory: False)
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run")
    _refused_unchanged(capsys, workdir, argv, "cannot write", "read-only")


# ---- xpert fit: data files ---------------------------------------------------------------------------------------

BAD_LINES = {
    "no_text_field": (b'{"body": "hello", "id": "x"}\n', ("line 61", "no field 'text'")),
    "truncated_json": (b'{"text": "cut off in the mid\n', ("line 61", "not valid JSON")),
    "not_utf8": (b'{"text": "caf\xe9"}\n', ("line 61", "not valid UTF-8")),
    "null_text": (b'{"text": null}\n', ("line 61", "field 'text' is null")),
    "list_row": (b'["text"]\n', ("line 61", "not an object")),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_corpus_line(case, tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work):
    root = shutil.copytree(tiny_data_root, workdir / "root")
    bad = root / "corpus" / "law" / "law.jsonl"
    line, fragments = BAD_LINES[case]
    bad.write_bytes(bad.read_bytes() + line)
    argv = _fit(root, tiny_tokenizer_dir, workdir / "run")
    _refused_unchanged(capsys, workdir, argv, str(bad), *fragments)


def test_empty_corpus_file(tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work):
    root = shutil.copytree(tiny_data_root, workdir / "root")
    (root / "corpus" / "law" / "more.jsonl").write_bytes(b"")
    argv = _fit(root, tiny_tokenizer_dir, workdir / "run")
    _refused_unchanged(capsys, workdir, argv, "more.jsonl", "empty (0 bytes)")


# ---- xpert analyze / extract / untrained-source: outputs and the source's config ---------------------------------


def _analyze(source: Path, tokenizer: Path, data_root: Path, out_dir: Path | str, *extra: str) -> list[str]:
    argv = ["analyze", f"--model={source}", f"--data.tokenizer={tokenizer}", f"--data.data_root={data_root}"]
    return [*argv, f"--data.cache_dir={Path(out_dir).parent / 'cache'}", f"--out_dir={out_dir}", *extra]


def _run_folder(path: Path) -> Path:
    """A finished run's folder (not an analysis or a bank): what a mistyped --out_dir would point at."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "metrics.csv").write_text("step,val/loss\n0,5.0\n")
    (path / "notes.md").write_text("my notes")
    return path


def test_analyze_into_a_run_folder(
    tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, workdir, capsys, no_expensive_work
):
    run = _run_folder(workdir / "run")
    argv = _analyze(tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, run)
    _refused_unchanged(capsys, workdir, argv, str(run), "not an analysis the kit wrote")


def test_analyze_into_the_working_directory(
    tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, workdir, capsys, no_expensive_work
):
    (workdir / "keep.txt").write_text("mine")
    argv = _analyze(tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, ".")
    _refused_unchanged(capsys, workdir, argv, "'.'", "working directory")


def test_selector_asks_for_more_experts_than_the_source_has(
    tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, workdir, capsys, no_expensive_work
):
    selector = ["--selector=xpert_pl.analysis.ConsistentExpertSelector", "--selector.init_args.n=9"]
    argv = _analyze(tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, workdir / "a", *selector)
    _refused_unchanged(capsys, workdir, argv, "n=9", "has 8")


def test_specialist_selector_of_an_unknown_domain(
    tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, workdir, capsys, no_expensive_work
):
    selector = ["--selector=xpert_pl.analysis.DomainSpecialistSelector", "--selector.init_args.domain=poetry"]
    argv = _analyze(tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, workdir / "a", *selector)
    _refused_unchanged(capsys, workdir, argv, "poetry", "not analysed", "code, law, news")


def test_dense_source_refused_from_its_config(tiny_tokenizer_dir, tiny_data_root, workdir, capsys, no_expensive_work):
    from xpert_pl.models import DenseStudent

    DenseStudent("llama-tiny").build(320).save_pretrained(workdir / "dense")
    argv = _analyze(workdir / "dense", tiny_tokenizer_dir, tiny_data_root, workdir / "a")
    _refused_unchanged(capsys, workdir, argv, "not a supported Mixture-of-Experts")


def test_extract_into_a_run_folder(tiny_source_dir, tiny_analysis_dir, workdir, capsys, no_expensive_work):
    run = _run_folder(workdir / "run")
    argv = ["extract", f"--model={tiny_source_dir}", f"--selection={tiny_analysis_dir / 'selection.json'}"]
    _refused_unchanged(capsys, workdir, [*argv, f"--out_dir={run}"], str(run), "not a bank the kit wrote")


def test_extract_into_the_working_directory(tiny_source_dir, tiny_analysis_dir, workdir, capsys, no_expensive_work):
    (workdir / "keep.txt").write_text("mine")
    argv = ["extract", f"--model={tiny_source_dir}", f"--selection={tiny_analysis_dir / 'selection.json'}"]
    _refused_unchanged(capsys, workdir, [*argv, "--out_dir=."], "working directory")


def test_extract_over_an_analysis(tiny_source_dir, tiny_analysis_dir, workdir, capsys, no_expensive_work):
    analysis = shutil.copytree(tiny_analysis_dir, workdir / "analysis")
    argv = ["extract", f"--model={tiny_source_dir}", f"--selection={analysis / 'selection.json'}"]
    _refused_unchanged(capsys, workdir, [*argv, f"--out_dir={analysis}"], "is an analysis the kit wrote")


def test_untrained_copy_into_a_foreign_folder(tiny_source_dir, workdir, capsys):
    run = _run_folder(workdir / "run")
    argv = ["untrained-source", f"--source={tiny_source_dir}", f"--out_dir={run}"]
    _refused_unchanged(capsys, workdir, argv, "not an untrained-source the kit wrote")


def test_export_dirname_outside_the_run(tiny_data_root, tiny_tokenizer_dir, workdir, capsys, no_expensive_work):
    (workdir / "config.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: xpert_pl.callbacks.HFExport\n      init_args: {dirname: '..'}\n"
    )
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, workdir / "run", "--config", str(workdir / "config.yaml"))
    _refused_unchanged(capsys, workdir, argv, "HFExport", "'..'", "cannot name a file")


# ---- xpert bench run: every cell's configuration before the shared stages ---------------------------------------


def test_bench_cell_typo_before_shared_stages(workdir, capsys, monkeypatch):
    from xpert_pl.experiments.runner import MatrixRunner

    def shared_stage(self):
        raise AssertionError("the shared stages started before the cells' configurations were checked")

    monkeypatch.setattr(MatrixRunner, "run_shared", shared_stage)
    (workdir / "typo.yaml").write_text("model:\n  initializer:\n    init_args:\n      rescael: none\n")
    text = (CONFIGS / "bench" / "quick.yaml").read_text()
    text = text.replace("out_dir: runs/bench-quick", f"out_dir: {workdir / 'bench'}")
    text = text.replace("configs/methods/xpert.yaml", str(workdir / "typo.yaml"))
    (workdir / "matrix.yaml").write_text(text)
    monkeypatch.chdir(CONFIGS.parent)
    before = tree_digest(workdir)
    refused(capsys, ["bench", "run", str(workdir / "matrix.yaml")], "xpert", "rescael")
    assert tree_digest(workdir) == before


def test_bench_into_a_foreign_folder(workdir, capsys, monkeypatch):
    from xpert_pl.experiments.runner import MatrixRunner

    def shared_stage(self):
        raise AssertionError("the shared stages started in a folder the kit did not make")

    monkeypatch.setattr(MatrixRunner, "run_shared", shared_stage)
    run = _run_folder(workdir / "run")
    text = (CONFIGS / "bench" / "quick.yaml").read_text().replace("out_dir: runs/bench-quick", f"out_dir: {run}")
    (workdir / "matrix.yaml").write_text(text)
    monkeypatch.chdir(CONFIGS.parent)
    before = tree_digest(workdir)
    refused(capsys, ["bench", "run", str(workdir / "matrix.yaml")], "out_dir", "not a bench the kit wrote")
    assert tree_digest(workdir) == before
