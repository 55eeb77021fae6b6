"""Tokenizers: exact BPE round trip, atomic saving, loading as named (local dir or Hub id, never trained by
accident), `xpert tokenizer`, and the vocabulary checks against a model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Lightning imported at collection (xpert_pl.cli does not load it): its log handler binds to pytest's capture, not
# to one test's capsys stream, which is closed by the time a later test logs.
import xpert_pl.training.lightning_cli  # noqa: F401
from xpert_pl.cli import main
from xpert_pl.errors import ConfigError
from xpert_pl.paths import DataRootError, data_root
from xpert_pl.tokenizer import (
    EOS_TOKEN,
    META_FILE,
    PAD_TOKEN,
    check_tokenizer_matches,
    is_hub_id,
    is_local_dir_or_hub_id,
    load_tokenizer,
    train_bpe_tokenizer,
)
from xpert_pl.tokenizer_training import train_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def f(x):\n    return x ** 2  # square\n",
    "Größe, naïve café — 日本語のテキスト 🎉🚀",
    "Section 12(b)(3): the plaintiff's motion is denied.\n\n\tIndented\r\nline",
] * 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreTrainedTokenizerFast]:
    out = tmp_path_factory.mktemp("tok") / "bpe"
    return out, train_bpe_tokenizer(TEXTS, out, vocab_size=512, min_frequency=2, domains=["toy"])


def test_train_writes_hf_directory_and_metadata(trained) -> None:
    out, tok = trained
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    meta = json.loads((out / "xpert_tokenizer.json").read_text())
    assert meta == {"vocab_size": len(tok), "training_chars": sum(map(len, TEXTS)), "domains": ["toy"]}
    assert 256 < len(tok) <= 512
    assert tok.eos_token == tok.bos_token == EOS_TOKEN and tok.pad_token == PAD_TOKEN
    assert tok.eos_token_id != tok.pad_token_id
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary directory left behind"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_round_trip_arbitrary_unicode(trained, text: str) -> None:
    _, tok = trained
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_round_trip_after_reload_with_special_tokens(trained) -> None:
    out, _ = trained
    tok = load_tokenizer(out)
    text = f"  leading spaces\n{EOS_TOKEN}never seen: ∮ E⋅da = Q,  𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x7f trailing  "
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.eos_token_id in ids
    assert tok.decode(ids) == text
    assert tok.pad_token == PAD_TOKEN


def test_load_missing_names_path_and_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope.*xpert tokenizer --out_dir"):
        load_tokenizer(tmp_path / "nope")


def test_load_sets_pad_to_eos_when_missing(tmp_path) -> None:
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.add_special_tokens([EOS_TOKEN])
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS_TOKEN).save_pretrained(str(tmp_path / "t"))
    tok = load_tokenizer(tmp_path / "t")
    assert tok.pad_token == EOS_TOKEN and tok.pad_token_id == tok.eos_token_id


def test_failed_training_leaves_nothing(tmp_path) -> None:
    def broken():
        yield "some text"
        raise RuntimeError("corpus read failed")

    with pytest.raises(RuntimeError):
        train_bpe_tokenizer(broken(), tmp_path / "tok", vocab_size=300)
    assert list(tmp_path.iterdir()) == []


def _corpus(root: Path) -> Path:
    for domain in ("a", "b"):
        (root / "corpus" / domain).mkdir(parents=True)
        lines = [json.dumps({"text": f"{domain} {t}", "id": f"{domain}{i}"}) for i, t in enumerate(TEXTS)]
        (root / "corpus" / domain / "x.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_train_tokenizer_trains_once_then_reuses(tmp_path, caplog) -> None:
    root, path = _corpus(tmp_path / "root"), tmp_path / "tok"
    with caplog.at_level(logging.INFO, logger="xpert_pl.tokenizer_training"):
        assert train_tokenizer(path, str(root), vocab_size=400, max_chars_per_domain=1000) == path
    assert any("training" in r.message for r in caplog.records)
    meta = json.loads((path / META_FILE).read_text())
    assert meta["domains"] == ["a", "b"] and meta["training_chars"] == 2000
    assert meta["settings"] == {"vocab_size": 400, "max_chars_per_domain": 1000}
    mtime = (path / "tokenizer.json").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xpert_pl.tokenizer_training"):
        train_tokenizer(path, str(root), vocab_size=400, max_chars_per_domain=1000)
    assert not any("training" in r.message for r in caplog.records)
    assert (path / "tokenizer.json").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match=r"vocab_size 400 there, 300 asked.*--overwrite true"):
        train_tokenizer(path, str(root), vocab_size=300, max_chars_per_domain=1000)
    assert (path / "tokenizer.json").stat().st_mtime_ns == mtime
    train_tokenizer(path, str(root), vocab_size=300, max_chars_per_domain=1000, overwrite=True)
    assert json.loads((path / META_FILE).read_text())["settings"]["vocab_size"] == 300


def test_train_tokenizer_never_replaces_a_foreign_folder(tmp_path) -> None:
    root, path = _corpus(tmp_path / "root"), tmp_path / "mine"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=rf"'{path}' exists but is not a tokenizer written by `xpert tokenizer`"):
            train_tokenizer(path, str(root), vocab_size=300, overwrite=overwrite)
    assert [p.name for p in path.iterdir()] == ["notes.txt"]
    with pytest.raises(ConfigError, match="vocab_size must be >= 258"):
        train_tokenizer(tmp_path / "small", str(root), vocab_size=100)


def test_xpert_tokenizer_command_trains_reuses_and_refuses(tmp_path, capsys) -> None:
    root, out = _corpus(tmp_path / "root"), tmp_path / "tok"
    argv = ["tokenizer", f"--out_dir={out}", f"--data_root={root}", "--vocab_size=300", "--max_chars_per_domain=500"]
    main(argv)
    tok = load_tokenizer(out)
    assert len(tok) == 300 and json.loads((out / META_FILE).read_text())["settings"]["vocab_size"] == 300
    mtime = (out / "tokenizer.json").stat().st_mtime_ns
    main(argv)
    assert (out / "tokenizer.json").stat().st_mtime_ns == mtime
    with pytest.raises(SystemExit) as exc:
        main([*argv[:3], "--vocab_size=320"])
    assert exc.value.code == 2 and "--overwrite true" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main(["tokenizer", f"--out_dir={tmp_path / 'foreign'}", f"--data_root={root}", "--overwrite=true"])
    assert exc.value.code == 2 and "not a tokenizer written by `xpert tokenizer`" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "foreign").iterdir()] == ["config.json"]


@pytest.mark.parametrize(
    ("name", "hub"),
    [
        ("allenai/OLMoE-1B-7B-0924", True),
        ("runs/tokenizer", True),
        ("./runs/tokenizer", False),
        ("/abs/tok", False),
        ("~/tok", False),
        ("a/b/c", False),
        ("../x", False),
        ("gpt2", False),
    ],
)
def test_hub_id_shape(name: str, hub: bool) -> None:
    assert is_hub_id(name) == hub


def test_local_dir_or_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "file").write_text("x")
    assert is_local_dir_or_hub_id("runs")  # a local directory
    assert is_local_dir_or_hub_id("allenai/OLMoE-1B-7B-0924")  # no such path, a Hub id's shape
    assert not is_local_dir_or_hub_id("owner/file")  # a Hub id's shape, but an existing file
    assert not is_local_dir_or_hub_id("runs/a/b")  # neither


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """Offline, with an empty Hugging Face cache of its own (huggingface_hub reads both settings at import)."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


def _fails_writing_nothing(argv: list[str], cwd: Path, capsys, *fragments: str) -> None:
    before = _listing(cwd)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert _listing(cwd) == before, "something was written in the working directory"


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_uncached_hub_tokenizer_offline_is_refused_and_nothing_is_trained(
    offline_hub, tiny_data_root, tmp_path, monkeypatch, capsys
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = ["analyze", "--config", str(CONFIGS / "analyze" / "olmoe-1b-7b.yaml"), f"--data.data_root={tiny_data_root}"]
    _fails_writing_nothing(
        argv, cwd, capsys, "'allenai/OLMoE-1B-7B-0924'", "neither a local tokenizer directory", "hf download"
    )
    assert not (cwd / "allenai").exists()


def test_mistyped_tokenizer_path_is_refused_and_nothing_is_trained(tiny_data_root, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = ["fit", "--config", str(CONFIGS / "pretrain" / "tiny.yaml"), f"--data.init_args.data_root={tiny_data_root}"]
    argv += ["--data.init_args.tokenizer=./no/such/tok", "--trainer.max_steps=1"]
    _fails_writing_nothing(argv, cwd, capsys, "'./no/such/tok'", "xpert tokenizer --out_dir")


def test_hub_id_is_read_from_the_local_cache_offline(offline_hub, tiny_tokenizer_dir, tmp_path, monkeypatch) -> None:
    # The layout huggingface_hub writes: models--<owner>--<name>/{refs/main, snapshots/<revision>/<files>}, and
    # .no_exist/<revision>/<file> for a file the repo lacks (a tokenizer-only repo has no config.json).
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--someone--tiny-tok"
    load_tokenizer(tiny_tokenizer_dir).save_pretrained(str(repo / "snapshots" / revision))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (repo / ".no_exist" / revision).mkdir(parents=True)
    (repo / ".no_exist" / revision / "config.json").touch()
    monkeypatch.chdir(tmp_path)
    tok = load_tokenizer("someone/tiny-tok")
    assert tok.get_vocab() == load_tokenizer(tiny_tokenizer_dir).get_vocab()
    assert not (tmp_path / "someone").exists()
    with pytest.raises(FileNotFoundError, match="someone/other-tok"):
        load_tokenizer("someone/other-tok")


def _config_only_model(path: Path, vocab_size: int, tokenizer_dir: Path | None = None) -> Path:
    from xpert_pl.models import OlmoeSource

    OlmoeSource("olmoe-tiny").config(vocab_size).save_pretrained(str(path))
    if tokenizer_dir is not None:
        load_tokenizer(tokenizer_dir).save_pretrained(str(path))
    return path


def test_check_tokenizer_matches_sizes_and_vocabularies(trained, tiny_tokenizer_dir, tmp_path, caplog) -> None:
    _, tok = trained  # 512 tokens at most, trained on TEXTS
    size = len(tok)
    with caplog.at_level(logging.WARNING, logger="xpert_pl.tokenizer"):
        check_tokenizer_matches(tok, _config_only_model(tmp_path / "padded", size + 24))
    assert any(str(size) in r.message and str(size + 24) in r.message for r in caplog.records)
    with pytest.raises(ConfigError, match=rf"tokenizer has {size} tokens but .* has vocab_size {size + 24}"):
        check_tokenizer_matches(tok, tmp_path / "padded", exact=True)
    with pytest.raises(ConfigError, match=rf"tokenizer has {size} tokens but .* has vocab_size {size - 1}"):
        check_tokenizer_matches(tok, _config_only_model(tmp_path / "small", size - 1))
    own = _config_only_model(tmp_path / "own", 512, tiny_tokenizer_dir)
    with pytest.raises(ConfigError, match=r"vocabulary differs from the one .*own ships"):
        check_tokenizer_matches(tok, own)
    check_tokenizer_matches(load_tokenizer(tiny_tokenizer_dir), own)
    with pytest.raises(ConfigError, match="cannot read the config of model"):
        check_tokenizer_matches(tok, tmp_path / "no_model")


def test_real_corpus_tokenizer_is_fast(tmp_path) -> None:
    try:
        root = data_root()
    except DataRootError:
        pytest.skip("no shared data root on this machine")
    tok = load_tokenizer(train_tokenizer(tmp_path / "tok", str(root), vocab_size=1024, max_chars_per_domain=100_000))
    assert len(tok) == 1024
    sample = "import os\nThe patient was given 5 mg of aspirin. § 2(a) The Secretary shall"
    assert tok.decode(tok(sample, add_special_tokens=False)["input_ids"]) == sample
