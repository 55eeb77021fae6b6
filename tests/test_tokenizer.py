"""Byte-level BPE tokenizer: exact round trip, atomic saving, loading and on-demand training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from xpert_pl.paths import DataRootError, data_root
from xpert_pl.tokenizer import EOS_TOKEN, PAD_TOKEN, ensure_tokenizer, load_tokenizer, train_bpe_tokenizer

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
    with pytest.raises(FileNotFoundError, match=r"nope.*ensure_tokenizer"):
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


def test_ensure_trains_once_then_loads(tmp_path, caplog) -> None:
    root = tmp_path / "root"
    for domain in ("a", "b"):
        (root / "corpus" / domain).mkdir(parents=True)
        lines = [json.dumps({"text": f"{domain} {t}", "id": f"{domain}{i}"}) for i, t in enumerate(TEXTS)]
        (root / "corpus" / domain / "x.jsonl").write_text("\n".join(lines) + "\n")
    path = tmp_path / "tok"
    with caplog.at_level(logging.INFO, logger="xpert_pl.tokenizer"):
        tok = ensure_tokenizer(path, str(root), vocab_size=400, max_chars_per_domain=1000)
    assert any("training" in r.message for r in caplog.records)
    meta = json.loads((path / "xpert_tokenizer.json").read_text())
    assert meta["domains"] == ["a", "b"] and meta["training_chars"] == 2000
    mtime = (path / "tokenizer.json").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xpert_pl.tokenizer"):
        again = ensure_tokenizer(path, str(root), vocab_size=400)
    assert not any("training" in r.message for r in caplog.records)
    assert (path / "tokenizer.json").stat().st_mtime_ns == mtime
    assert again.get_vocab() == tok.get_vocab()


def test_ensure_on_real_corpus_is_fast(tmp_path) -> None:
    try:
        root = data_root()
    except DataRootError:
        pytest.skip("no shared data root on this machine")
    tok = ensure_tokenizer(tmp_path / "tok", str(root), vocab_size=1024, max_chars_per_domain=100_000)
    assert len(tok) == 1024
    sample = "import os\nThe patient was given 5 mg of aspirin. § 2(a) The Secretary shall"
    assert tok.decode(tok(sample, add_special_tokens=False)["input_ids"]) == sample
