"""The `xpert` command: dispatch, and clear errors (exit status 2) for bad requests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Lightning imported at collection (xpert_pl.cli does not load it): its log handler binds to pytest's capture, not
# to one test's capsys stream, which is closed by the time a later test logs.
import xpert_pl.training.lightning_cli  # noqa: F401
from xpert_pl.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_help_lists_the_commands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "analyze", "extract", "bench", "report", "tokenizer"):
        assert command in out


def test_unknown_command_exits_2_and_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'train'" in err and "analyze" in err


def test_resume_and_warm_start_together_are_refused(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    args = [
        "fit",
        "--config",
        str(CONFIGS / "pretrain" / "tiny.yaml"),
        f"--data.init_args.data_root={tiny_data_root}",
        f"--data.init_args.tokenizer={tiny_tokenizer_dir}",
        f"--data.init_args.cache_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--ckpt_path=last",
        f"--model.init_checkpoint={tmp_path}",
    ]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--ckpt_path" in err and "--model.init_checkpoint" in err and "Drop one of them" in err


def test_analyze_refuses_a_dense_model(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    from xpert_pl.models import DenseStudent

    DenseStudent("llama-tiny").build(320).save_pretrained(tmp_path / "dense")
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "analyze",
                f"--model={tmp_path / 'dense'}",
                f"--data.tokenizer={tiny_tokenizer_dir}",
                f"--data.data_root={tiny_data_root}",
                f"--out_dir={tmp_path / 'analysis'}",
            ]
        )
    assert exc.value.code == 2
    assert "supported families: olmoe" in capsys.readouterr().err
    assert not (tmp_path / "analysis").exists()


def test_extract_without_selection_explains_the_order_of_steps(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["extract", f"--model={tmp_path}", f"--selection={tmp_path / 'missing.json'}"])
    assert exc.value.code == 2
    assert "run `xpert analyze` first" in capsys.readouterr().err


def _modules_loaded_by(argv: list[str], modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after `main(argv)` (its exit included)."""
    code = (
        "import sys\nfrom xpert_pl.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', *[m for m in {modules!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip().splitlines()[-1].split()[1:]


@pytest.mark.parametrize("argv", [["--help"], [], ["no-such-command"], ["report", "--help"], ["configs"]], ids=" ".join)
def test_help_and_light_commands_import_neither_torch_nor_lightning(argv):
    assert _modules_loaded_by(argv, ("torch", "lightning")) == []


def test_bench_help_never_imports_lightning():
    assert _modules_loaded_by(["bench", "run", "--help"], ("lightning",)) == []


def test_every_command_is_summarised_in_the_help():
    from xpert_pl import cli
    from xpert_pl.training import lightning_cli

    assert cli.LIGHTNING_COMMANDS == lightning_cli.LIGHTNING_COMMANDS
    assert list(cli.SUMMARIES) == [*cli.LIGHTNING_COMMANDS, *cli.FUNCTION_COMMANDS]
    assert cli.XpertCLI is lightning_cli.XpertCLI  # the old import path still works


def _first_words(function, argument: str, count: int = 6) -> str:
    """The first words of `argument`'s documentation in `function`'s docstring (so the test follows edits)."""
    from docstring_parser import parse

    params = {p.arg_name: p.description for p in parse(function.__doc__).params}
    return " ".join(params[argument].split()[:count])


def test_print_config_comments_documents_every_option(capsys):
    from xpert_pl.initializers import XpertInit

    methods = CONFIGS / "methods" / "xpert.yaml"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "pretrain" / "tiny.yaml"),
                "--config",
                str(methods),
                "--print_config=comments",
            ]
        )
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # comments wrap long lines
    assert "class_path: xpert_pl.initializers.XpertInit" in out
    assert _first_words(XpertInit.__init__, "bank") in out and _first_words(XpertInit.__init__, "transfer") in out
    # The nested adaptation options are documented from FFNTransfer's attribute docstrings.
    assert "Frobenius norm given to each transferred matrix" in out


def test_function_command_print_config_comments(capsys):
    from xpert_pl.report import write_report

    with pytest.raises(SystemExit) as exc:
        main(["report", "--print_config=comments"])
    assert exc.value.code == 0
    assert _first_words(write_report, "runs_dir") in " ".join(capsys.readouterr().out.split())


def test_configs_lists_the_shipped_yamls_with_their_command(capsys):
    main(["configs"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"shipped configs in {CONFIGS}:"
    assert any(line.split()[:3] == ["pretrain/tiny.yaml", "xpert", "fit"] for line in lines[1:])
    assert len(lines) - 1 == len(list(CONFIGS.rglob("*.yaml")))


def test_lightning_messages_keep_their_bare_form_when_lightning_loads_late():
    code = (
        "from xpert_pl.cli import main\nmain(['configs'])\n"
        "from lightning.pytorch.utilities import rank_zero_info\nrank_zero_info('GPU available: said plainly')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "GPU available: said plainly" in result.stderr.splitlines()
