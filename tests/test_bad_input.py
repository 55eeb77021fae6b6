"""One test per row of the README's bad-input table: exit status 2, a message naming the problem and the fix, no
traceback, and nothing partial left behind."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from safety_checks import CONFIGS, PRETRAIN, refused, tiny_fit_args

# Lightning imported at collection (xpert_pl.cli does not load it): its log handler binds to pytest's capture, not
# to one test's capsys stream, which is closed by the time a later test logs.
import xpert_pl.training.lightning_cli  # noqa: F401
from xpert_pl.cli import main


def _fit(data_root: Path, tokenizer: Path, tmp_path: Path, *extra: str) -> list[str]:
    return tiny_fit_args(PRETRAIN, tmp_path / "run", data_root, tokenizer, "--trainer.max_steps=1", *extra)


def _copy_model(src: Path, dst: Path, edit=None) -> Path:
    """A copy of an HF directory; `edit(tensors)` may change its weights first."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / "model.safetensors")
    if edit is not None:
        edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_unknown_config_key(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, "--model.learning_rat=0.1")
    refused(capsys, argv, "learning_rat", "--print_config")


def test_malformed_yaml(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model:\n  learning_rate: [0.1\n")
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, "--config", str(tmp_path / "bad.yaml"))
    refused(capsys, argv, "bad.yaml")


def test_unknown_class_path_lists_the_valid_ones(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, "--model.initializer=xpert_pl.initializers.NoSuchInit")
    refused(capsys, argv, "NoSuchInit", "xpert_pl.initializers.XpertInit", "xpert_pl.initializers.ScratchInit")


def test_adaptation_option_in_its_former_place(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    extra = ["--config", str(CONFIGS / "methods" / "xpert.yaml"), "--model.initializer.init_args.rescale=none"]
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, *extra)
    refused(capsys, argv, "--model.initializer.init_args.transfer.rescale=", "transfer: {rescale: ...}")


def test_source_that_is_not_an_moe(tiny_tokenizer_dir, tmp_path, capsys):
    from xpert_pl.models import DenseStudent

    DenseStudent("llama-tiny").build(320).save_pretrained(tmp_path / "dense")
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"layers": [], "source": {"fingerprint": "0" * 16, "model": "elsewhere"}}))
    argv = ["extract", f"--model={tmp_path / 'dense'}", f"--selection={selection}", f"--out_dir={tmp_path / 'b'}"]
    refused(capsys, argv, "not a supported Mixture-of-Experts", "supported families: olmoe")
    assert not (tmp_path / "b").exists()


def test_bank_that_does_not_fit_the_student(tiny_data_root, tiny_tokenizer_dir, tiny_bank, tmp_path, capsys):
    extra = [
        "--config",
        str(CONFIGS / "methods" / "xpert.yaml"),
        f"--model.initializer.init_args.bank={tiny_bank}",
        "--model.initializer.init_args.transfer.depth_strategy=grouped",
    ]
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, *extra)
    refused(capsys, argv, "4 groups for 2 layers", "--group_layers 2")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tucker_ranks_larger_than_the_tensor(tiny_source_dir, tiny_analysis_dir, tmp_path, capsys):
    argv = [
        "extract",
        f"--model={tiny_source_dir}",
        f"--selection={tiny_analysis_dir / 'selection.json'}",
        f"--out_dir={tmp_path / 'bank'}",
        "--consolidator.ranks=[4096, 1.0, 1.0]",
    ]
    refused(capsys, argv, "rank 4096", "[1, 256]")
    assert not (tmp_path / "bank").exists()


def _domains(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"- name: {n}\n  files: [corpus/{n}/*.jsonl]\n" for n in names))
    return path


def test_empty_domain_corpus(tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, tmp_path, capsys):
    root = tmp_path / "root"
    for domain in ("law", "code"):
        (root / "corpus" / domain).mkdir(parents=True)
        src = next((tiny_data_root / "corpus" / domain).glob("*.jsonl"))
        (root / "corpus" / domain / src.name).write_text(src.read_text() if domain == "code" else "")
    domains = _domains(tmp_path / "domains.yaml", ["law", "code"])
    argv = ["analyze", f"--model={tiny_source_dir}", f"--data.tokenizer={tiny_tokenizer_dir}"]
    argv += [f"--data.data_root={root}", f"--domains={domains}", f"--out_dir={tmp_path / 'analysis'}"]
    refused(capsys, argv, "law", "every file is empty")
    assert not (tmp_path / "analysis").exists()


def test_missing_domain_corpus(tiny_source_dir, tiny_tokenizer_dir, tiny_data_root, tmp_path, capsys):
    domains = _domains(tmp_path / "domains.yaml", ["law", "poetry"])
    argv = ["analyze", f"--model={tiny_source_dir}", f"--data.tokenizer={tiny_tokenizer_dir}"]
    argv += [f"--data.data_root={tiny_data_root}", f"--domains={domains}", f"--out_dir={tmp_path / 'a'}"]
    refused(capsys, argv, "poetry", "corpus/poetry/*.jsonl")
    assert not (tmp_path / "a").exists()


def test_teacher_and_student_vocabularies_differ(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    from xpert_pl.models import OlmoeSource

    OlmoeSource("olmoe-tiny").build(vocab_size=400).save_pretrained(tmp_path / "teacher")
    extra = [
        "--config",
        str(CONFIGS / "methods" / "distillation.yaml"),
        f"--model.objective.init_args.teacher={tmp_path / 'teacher'}",
    ]
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, *extra)
    refused(capsys, argv, "vocab_size 400", "320", "teacher's tokenizer")


def _other_tokenizer(path: Path) -> Path:
    """A 300-token BPE trained on other text than the tiny corpus: another vocabulary."""
    from xpert_pl.tokenizer import train_bpe_tokenizer

    train_bpe_tokenizer(["the quick brown fox jumps over the lazy dog"] * 50, path, vocab_size=300)
    return path


def test_tokenizer_that_does_not_match_the_source(tiny_source_dir, tiny_data_root, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the tokenizer was checked")

    monkeypatch.setattr("xpert_pl.pipeline.steps.load_causal_lm", never)
    argv = ["analyze", f"--model={tiny_source_dir}", f"--data.tokenizer={_other_tokenizer(tmp_path / 'tok')}"]
    argv += [
        f"--data.data_root={tiny_data_root}",
        f"--out_dir={tmp_path / 'analysis'}",
        f"--data.cache_dir={tmp_path / 'cache'}",
    ]
    refused(
        capsys, argv, "vocabulary differs from the one", str(tiny_source_dir), f"--data.tokenizer={tiny_source_dir}"
    )
    assert not (tmp_path / "analysis").exists()


def test_tokenizer_that_is_not_there(tiny_data_root, tmp_path, capsys):
    argv = _fit(tiny_data_root, tmp_path / "no_such_tok", tmp_path)
    refused(capsys, argv, "no_such_tok", "neither a local tokenizer directory", "xpert tokenizer --out_dir")
    assert not (tmp_path / "no_such_tok").exists()


@pytest.mark.parametrize("how", ["init_checkpoint", "pretrained"])
def test_warm_start_from_a_model_of_another_vocabulary(how, tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    from xpert_pl.models import DenseStudent

    DenseStudent("llama-tiny").build(400).save_pretrained(tmp_path / "other")
    if how == "init_checkpoint":
        extra = [f"--model.init_checkpoint={tmp_path / 'other'}"]
    else:
        extra = [
            "--model.model=xpert_pl.models.PretrainedCausalLM",
            f"--model.model.init_args.path={tmp_path / 'other'}",
        ]
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, *extra)
    refused(capsys, argv, "tokenizer has 320 tokens", "vocab_size 400", "the tokenizer the model was trained with")
    assert not (tmp_path / "run").exists()


def test_nan_in_source_weights(tiny_source_dir, tiny_analysis_dir, tmp_path, capsys):
    def poison(tensors: dict[str, torch.Tensor]) -> None:
        for key in [k for k in tensors if "layers.0." in k and "experts" in k]:  # every expert of layer 0
            tensors[key] = tensors[key].clone()
            tensors[key][..., 0] = float("nan")

    model = _copy_model(tiny_source_dir, tmp_path / "nan", poison)
    argv = ["extract", f"--model={model}", f"--selection={tiny_analysis_dir / 'selection.json'}"]
    refused(capsys, [*argv, f"--out_dir={tmp_path / 'bank'}"], "NaN or Inf", "experts")
    assert not (tmp_path / "bank").exists()


def test_data_root_without_the_named_files(tiny_tokenizer_dir, tmp_path, capsys):
    argv = _fit(tmp_path / "no_such_root", tiny_tokenizer_dir, tmp_path)
    refused(capsys, argv, "no_such_root", "XPERT_DATA_ROOT")


def test_truncated_safetensors(tiny_source_dir, tiny_analysis_dir, tmp_path, capsys):
    model = _copy_model(tiny_source_dir, tmp_path / "cut")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = ["extract", f"--model={model}", f"--selection={tiny_analysis_dir / 'selection.json'}"]
    refused(capsys, [*argv, f"--out_dir={tmp_path / 'bank'}"], "corrupt or truncated", "model.safetensors")
    assert not (tmp_path / "bank").exists()


def test_truncated_bank(tiny_data_root, tiny_tokenizer_dir, tiny_bank, tmp_path, capsys):
    bank = tmp_path / "bank"
    bank.mkdir()
    for f in tiny_bank.iterdir():
        data = f.read_bytes()
        (bank / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    extra = ["--config", str(CONFIGS / "methods" / "xpert.yaml"), f"--model.initializer.init_args.bank={bank}"]
    refused(capsys, _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, *extra), "bank", "re-run `xpert extract`")


def test_warm_start_and_resume_together(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    extra = ["--ckpt_path=last", f"--model.init_checkpoint={tmp_path}"]
    refused(capsys, _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, *extra), "--ckpt_path", "Drop one of them")


def test_warm_start_with_an_initializer(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    # The warm start loads every weight: the XPERT initializer (and its bank) would be silently ignored.
    extra = ["--config", str(CONFIGS / "methods" / "xpert.yaml"), f"--model.init_checkpoint={tmp_path}"]
    err = refused(capsys, _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, *extra), "XpertInit", "would be ignored")
    assert "--model.init_checkpoint" in err


def test_warm_start_from_another_architecture(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    # 8 heads of 16 where the config builds 4 of 32: every tensor has the same shape, so all of them loaded.
    from xpert_pl.models import DenseStudent
    from xpert_pl.tokenizer import load_tokenizer

    tokenizer, hf = load_tokenizer(str(tiny_tokenizer_dir)), tmp_path / "hf8"
    heads = {"num_attention_heads": 8, "num_key_value_heads": 8}
    DenseStudent(overrides=heads).build(len(tokenizer)).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    argv = _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, f"--model.init_checkpoint={hf}")
    refused(capsys, argv, "another architecture", "num_attention_heads: 8 there, 4 here")
    main([*argv, '--model.model.init_args.overrides={"num_attention_heads": 8, "num_key_value_heads": 8}'])


def test_disk_full_while_writing_a_bank(tiny_source_dir, tiny_analysis_dir, tmp_path, capsys, monkeypatch):
    import xpert_pl.artifacts as artifacts

    real = artifacts.os.replace

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(artifacts.os, "replace", full_disk)
    argv = ["extract", f"--model={tiny_source_dir}", f"--selection={tiny_analysis_dir / 'selection.json'}"]
    refused(capsys, [*argv, f"--out_dir={tmp_path / 'bank'}"], "disk is full", "Free space")
    monkeypatch.setattr(artifacts.os, "replace", real)
    assert not (tmp_path / "bank").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no temporary file left either


def test_pickle_payload_in_a_checkpoint_is_refused(tiny_data_root, tiny_tokenizer_dir, tmp_path, capsys):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "evil.ckpt")
    for flag in ("--ckpt_path", "--model.init_checkpoint"):
        argv = _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, f"{flag}={tmp_path / 'evil.ckpt'}")
        refused(capsys, argv, "evil.ckpt", "weights_only")
        assert not marker.exists()


def test_missing_matrix_file(tmp_path, capsys):
    refused(capsys, ["bench", "run", str(tmp_path / "nowhere.yaml")], "nowhere.yaml", "not found")


def test_a_matrix_reusing_a_bench_that_never_ran(tmp_path, capsys, monkeypatch):
    # reference-budgets.yaml takes its tokenizer and source from runs/bench-reference, absent in a fresh folder.
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "run", str(CONFIGS / "bench" / "reference-budgets.yaml")]
    err = refused(capsys, argv, "data.tokenizer: runs/bench-reference/shared/tokenizer", "source.hf: runs/bench-refer")
    assert err.count("run the bench whose out_dir is runs/bench-reference (`make bench`) first") == 2
    assert list(tmp_path.iterdir()) == []  # refused before its runs folder is made or anything tokenised


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["bench", "run", str(tmp_path / "nowhere.yaml"), "--debug"])


def test_bad_json_manifest_is_reported(tiny_data_root, tiny_tokenizer_dir, tiny_bank, tmp_path, capsys):
    bank = tmp_path / "bank"
    bank.mkdir()
    for f in tiny_bank.iterdir():
        (bank / f.name).write_bytes(f.read_bytes())
    (bank / "manifest.json").write_text(json.dumps({"format": "xpert-bank"})[:-3])
    extra = ["--config", str(CONFIGS / "methods" / "xpert.yaml"), f"--model.initializer.init_args.bank={bank}"]
    refused(capsys, _fit(tiny_data_root, tiny_tokenizer_dir, tmp_path, *extra), "manifest.json")


def test_names_that_would_write_outside_the_run_directory(tiny_source_dir, tiny_tokenizer_dir, tmp_path, capsys):
    domains = tmp_path / "domains.yaml"
    domains.write_text("- name: ../../escape\n  files: [corpus/law/*.jsonl]\n")
    argv = ["analyze", f"--model={tiny_source_dir}", f"--data.tokenizer={tiny_tokenizer_dir}", f"--domains={domains}"]
    refused(capsys, [*argv, f"--out_dir={tmp_path / 'a'}"], "'../../escape'", "outside the run directory")
    matrix = tmp_path / "matrix.yaml"
    for name in ("scratch.yaml", "student.yaml", "stage.yaml"):
        (tmp_path / name).write_text("{}\n")
    stage, scratch = tmp_path / "stage.yaml", tmp_path / "scratch.yaml"
    matrix.write_text(
        f"source: {{config: {stage}, steps: 1}}\nanalyze: {stage}\nextract: {stage}\nseeds: [0]\n"
        f"budgets: {{short: 1}}\nscales: {{tiny: {tmp_path / 'student.yaml'}}}\n"
        f"methods: {{scratch: {scratch}, /tmp/x: {scratch}}}\n"
    )
    refused(capsys, ["bench", "run", str(matrix)], "'/tmp/x'", "outside the run directory")
