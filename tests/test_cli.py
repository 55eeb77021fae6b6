"""The `xpert` command: dispatch, and clear errors (exit status 2) for bad requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpert_pl.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_help_lists_the_commands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "analyze", "extract", "demo"):
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
