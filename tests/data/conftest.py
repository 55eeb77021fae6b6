"""Fixtures of the data-layer tests: a tiny two-domain jsonl corpus and a small tokenizer trained on it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from xpert_pl.tokenizer import train_bpe_tokenizer

WORDS = {
    "alpha": [
        "the",
        "court",
        "held",
        "that",
        "statute",
        "section",
        "appeal",
        "plaintiff",
        "defendant",
        "ruling",
        "judge",
        "§",
    ],
    "beta": [
        "def",
        "return",
        "import",
        "class",
        "self",
        "None",
        "lambda",
        "for",
        "while",
        "yield",
        "print(",
        ")",
        "ü",
        "日本",
    ],
}


def make_docs(domain: str, n: int, seed: int, with_ids: bool = True) -> list[dict]:
    """`n` random documents of a domain; without `id` the split falls back to hashing the text."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS[domain]) for _ in range(rng.randint(5, 80)))
        doc = {"text": f"{domain} doc {i}: {text}\n", "source": "synthetic"}
        if with_ids:
            doc["id"] = f"{domain}-{i}"
        docs.append(doc)
    return docs


def write_jsonl(path: Path, docs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))


@pytest.fixture(name="write_jsonl")
def write_jsonl_fixture():
    """The `write_jsonl(path, docs)` helper, for tests that build their own files."""
    return write_jsonl


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data root with corpus/alpha (two files, with ids) and corpus/beta (one file, no ids), 120 docs each."""
    root = tmp_path_factory.mktemp("data_root")
    alpha = make_docs("alpha", 120, seed=1)
    write_jsonl(root / "corpus" / "alpha" / "a.jsonl", alpha[:70])
    write_jsonl(root / "corpus" / "alpha" / "b.jsonl", alpha[70:])
    write_jsonl(root / "corpus" / "beta" / "x.jsonl", make_docs("beta", 120, seed=2, with_ids=False))
    return root


@pytest.fixture(scope="session")
def tiny_docs(tiny_root: Path) -> dict[str, list[dict]]:
    """Documents of each tiny domain, in file order."""
    out: dict[str, list[dict]] = {}
    for domain_dir in sorted((tiny_root / "corpus").iterdir()):
        out[domain_dir.name] = [
            json.loads(line) for f in sorted(domain_dir.glob("*.jsonl")) for line in f.read_text().splitlines()
        ]
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_root: Path, tiny_docs: dict[str, list[dict]], tmp_path_factory: pytest.TempPathFactory):
    """Path of a 512-token byte-level BPE tokenizer trained on the tiny corpus."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    texts = [d["text"] for docs in tiny_docs.values() for d in docs]
    train_bpe_tokenizer(texts, path, vocab_size=512)
    return path
